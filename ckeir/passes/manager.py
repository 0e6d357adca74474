"""The pass manager: a registry of named passes, a textual pipeline, verification after each
pass, per-pass timing, and IR dumps (`--print-ir-after-all`, `--print-ir-after=P`,
`--dump-dir`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import attrs

from ckeir.errors import PassError
from ckeir.ir.core import Operation, Rewriter
from ckeir.ir.printer import print_ir
from ckeir.ir.verifier import verify
from ckeir.outputs import write_output


@attrs.define
class Target:
    """What the passes know of the machine a program runs on (from the cluster spec)."""

    cores: int = 1
    l1d: int = 32 * 1024
    l2: int = 1 << 20
    l3: int = 32 << 20
    dram_bw: float = 20e9
    vector_bits: int = 512


@attrs.define
class PassContext:
    """State shared along one pipeline run: the target, options, and products of passes that
    are not IR (e.g. the LLVM module text of lower-llvm)."""

    target: Target = attrs.field(factory=Target)
    options: dict = attrs.field(factory=dict)
    artifacts: dict = attrs.field(factory=dict)
    stats: dict = attrs.field(factory=dict)


class Pass:
    """A named IR → IR transformation.  Subclasses set `name`, `summary` and `apply`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def apply(self, module: Operation, ctx: PassContext, rewriter: Rewriter) -> None:
        raise NotImplementedError


PASSES: dict[str, type[Pass]] = {}
DEFAULT_PIPELINE = ("shape-infer", "quantize", "place", "insert-collectives", "tile", "plan-memory")


def register_pass(cls: type[Pass]) -> type[Pass]:
    if not cls.name or cls.name in PASSES:
        raise ValueError(f"bad or duplicate pass name {cls.name!r}")
    PASSES[cls.name] = cls
    return cls


def parse_pipeline(text: str) -> list[Pass]:
    """`"shape-infer, tile"` (optionally wrapped in `builtin.module(...)`) → pass instances."""
    text = text.strip()
    if text.startswith("builtin.module(") and text.endswith(")"):
        text = text[len("builtin.module(") : -1]
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise PassError("the pass pipeline is empty")
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise PassError(
            f"unknown pass '{unknown[0]}' in the pipeline",
            hint="known passes: " + ", ".join(sorted(PASSES)),
        )
    return [PASSES[n]() for n in names]


@attrs.define
class PassTiming:
    name: str
    seconds: float
    changes: int


@attrs.define
class PassManager:
    passes: list[Pass]
    verify_each: bool = True
    print_after_all: bool = False
    print_after: frozenset[str] = frozenset()
    dump_dir: Path | None = None
    printer: Callable[[str], None] = print
    timings: list[PassTiming] = attrs.field(factory=list)

    def run(self, module: Operation, ctx: PassContext) -> Operation:
        verify(module)  # always, as mlir-opt does: no pass sees input that breaks its contract
        self._dump(0, "input", module)
        for i, p in enumerate(self.passes, start=1):
            rewriter = Rewriter()
            t0 = time.perf_counter()
            p.apply(module, ctx, rewriter)
            if self.verify_each:
                verify(module)
            self.timings.append(PassTiming(p.name, time.perf_counter() - t0, rewriter.changes))
            if self.print_after_all or p.name in self.print_after:
                self.printer(f"// -----// IR Dump After {p.name} //----- //\n{print_ir(module)}")
            self._dump(i, p.name, module)
        return module

    def _dump(self, index: int, name: str, module: Operation) -> None:
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            write_output(self.dump_dir / f"{index:02d}-{name}.mlir", print_ir(module))

    def timing_report(self) -> str:
        total = sum(t.seconds for t in self.timings) or 1e-12
        lines = [
            "===-------------------------------------------------------------------------===",
            "                         ... Pass execution timing report ...",
            "===-------------------------------------------------------------------------===",
            f"  Total Execution Time: {total:.4f} seconds",
            "",
            "  ----Wall Time----  ----Changes----  ----Name----",
        ]
        for t in self.timings:
            lines.append(
                f"  {t.seconds:.4f} ({100 * t.seconds / total:5.1f}%)  {t.changes:15d}  {t.name}"
            )
        lines.append(f"  {total:.4f} (100.0%)  {'':15s}  Total")
        return "\n".join(lines)


def funcs(module: Operation) -> list[Operation]:
    """The `cke.func` programs of a module."""
    return [op for op in module.regions[0].entry.ops if op.name == "cke.func"]
