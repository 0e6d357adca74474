"""quantize: rewrite weight types to the schedule's format.

Requires: shape-infer.  Options (from the schedule, or `ctx.options`): `weight_format`, one of
`CHOICES` (`keep`, or a format ckeir computes on that `gguf.quants` can produce), and
`weight_except` (names of the module's weights, with or without the `.weight` suffix; another
name is an error).  Idempotent.
Matrices whose rows are whole blocks take the format; 1-D weights (norm gains) are f32, as
GGML keeps them; `keep` leaves every matrix in the format it was loaded in.  A matrix left in
a format ckeir has no kernel for (a model file's IQ2_XXS, say) is refused here, before
anything is compiled, naming the tensor, its type and what to schedule instead.  A matmul
on block-quantized weights gets `act = "q8_0"` (unless the schedule says `quantize activations
f32`): its activations are quantized to 8-bit blocks
once per row and multiplied with integer dot products (`ckeir.quant` states the exact
arithmetic), as GGML does.  Only the IR
types change here: the runtime packs the numbers to match (bit-exact with `gguf.quants`).
Records `ctx.stats["quantize"]` = {weight name: format}.
"""

from __future__ import annotations

from ckeir.errors import PassError
from ckeir.formats import COMPUTED, FORMATS, TARGETS
from ckeir.ir.core import Operation, Rewriter
from ckeir.ir.types import ShapedType, TensorType, element_format, quant_type
from ckeir.passes.manager import Pass, PassContext, register_pass

CHOICES = ("keep", *TARGETS)


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
    stored = element_format(t.element).name
    if t.rank != 2:
        return "f32"
    if fmt == "keep" or name in excepted or t.shape[-1] % FORMATS[fmt].block:
        if not FORMATS[stored].computes:
            raise PassError(
                f"quantize: weight '{name}' is stored as {stored.upper()}, which ckeir cannot "
                "compute on",
                hint=f"schedule 'quantize weights q8_0' (or one of {', '.join(CHOICES[1:])}) "
                f"to convert it at load; ckeir computes as stored on {', '.join(COMPUTED)}",
            )
        return stored
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
