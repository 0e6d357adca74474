"""quantize: rewrite weight types to the schedule's format.

Requires: shape-infer.  Options (from the schedule, or `ctx.options`): `weight_format` in
`keep f32 q8_0 q4_0 q4_1` and `weight_except` (names of the module's weights, with or without
the `.weight` suffix; another name is an error).  Idempotent.
Matrices whose rows are whole 32-element blocks take the format; 1-D weights (norm gains) stay
f32, as GGML keeps them; `keep` leaves every weight in the format it was loaded in.  A matmul
on block-quantized weights gets `act = "q8_0"` (unless the schedule says `quantize activations
f32`): its activations are quantized to 8-bit blocks
once per row and multiplied with integer dot products (`ckeir.quant` states the exact
arithmetic), as GGML does.  Only the IR
types change here: the runtime packs the numbers to match (bit-exact with `gguf.quants`).
Records `ctx.stats["quantize"]` = {weight name: format}.
"""

from __future__ import annotations

from ckeir.errors import PassError
from ckeir.formats import FORMATS
from ckeir.ir.core import Operation, Rewriter
from ckeir.ir.types import ShapedType, TensorType, element_format, quant_type
from ckeir.passes.manager import Pass, PassContext, register_pass

CHOICES = ("keep", "f32", "q8_0", "q4_0", "q4_1")


def weight_plan(ctx: PassContext) -> tuple[str, frozenset[str]]:
    sched = ctx.options.get("schedule")
    fmt = ctx.options.get("weight_format") or getattr(sched, "weight_format", None) or "keep"
    excepted = ctx.options.get("weight_except") or getattr(sched, "weight_except", ()) or ()
    if fmt not in CHOICES:
        raise PassError(f"quantize: unknown weight format '{fmt}' (choose {', '.join(CHOICES)})")
    names = set()
    for n in excepted:
        names |= {n, n.removesuffix(".weight"), n + ".weight"}
    return fmt, frozenset(names)


def check_excepted_names(module: Operation, ctx: PassContext) -> None:
    """Every name in `weight_except` is a weight of the module: a misspelt name would
    silently quantize what the user meant to keep."""
    weights = {op.attr("name") for op in module.walk() if op.name == "cke.weight"}
    sched = ctx.options.get("schedule")
    named = ctx.options.get("weight_except") or getattr(sched, "weight_except", ()) or ()
    missing = [n for n in named if not {n, n + ".weight"} & weights]
    if missing and weights:
        raise PassError(
            f"quantize: no weight is named {missing[0]!r} (weight_except)",
            hint="weights outside the layers: "
            + ", ".join(sorted(w for w in weights if not w.startswith("blk."))),
        )


def target_format(name: str, t: ShapedType, fmt: str, excepted: frozenset[str]) -> str:
    if fmt == "keep" or t.rank != 2 or name in excepted:
        return element_format(t.element).name
    if t.shape[-1] % FORMATS[fmt].block:
        return element_format(t.element).name
    return fmt


@register_pass
class Quantize(Pass):
    name = "quantize"
    summary = "rewrite weight element types to the scheduled GGML block format"

    def apply(self, module: Operation, ctx: PassContext, rewriter: Rewriter) -> None:
        fmt, excepted = weight_plan(ctx)
        sched = ctx.options.get("schedule")
        act = ctx.options.get("activation_format") or getattr(sched, "activation_format", None)
        act = act or "q8_0"
        chosen = ctx.stats.setdefault("quantize", {})
        check_excepted_names(module, ctx)
        for op in module.walk():
            if op.name != "cke.weight":
                continue
            t = op.results[0].type
            if not isinstance(t, ShapedType):
                raise PassError("quantize: run shape-infer first (a weight is unranked)")
            name = op.attr("name")
            new = target_format(name, t, fmt, excepted)
            chosen[name] = new
            # Users' result types do not depend on the weight's element type.
            rewriter.set_result_type(op, 0, TensorType(t.shape, quant_type(new)))
            for user, i in op.results[0].uses:
                if user.name == "cke.matmul" and i == 1 and FORMATS[new].quantized and act != "f32":
                    rewriter.set_attr(user, "act", "q8_0")
                elif user.name == "cke.matmul" and i == 1:
                    rewriter.remove_attr(user, "act")
