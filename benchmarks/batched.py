"""Batched decode, like llama.cpp's `llama-batched-bench`: aggregate decode tok/s of one rank
when B sequences decode together (issue 13: a step reads the weights once for B tokens).

For each B the spec is compiled with `batch B`; B prompts of `--prompt` tokens are prefilled
one per slot, then `--gen` decode steps of B rows each run back to back through
`NativeSlots.decode` (greedy: each row is fed its own argmax), best of N.  B = 1 is the
one-sequence program (`NativeEngine.decode`), what `generate` runs.  Aggregate tok/s =
B x steps / seconds; the step's time is wall time around the engine call (Python included),
and `native` is the part inside the native program.

    python -m benchmarks.batched [--spec specs/smollm2-135m.cke] [--batches 1,2,4,8]
                                 [--threads 2] [--prompt 32] [--gen 64] [--repeat 3] [--json FILE]

llama.cpp's side (the same sequences through its batch API) is not measured here yet.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO, common_args, fmt, host_line, log, print_table, write_json

DEFAULT_SPEC = REPO / "specs" / "smollm2-135m.cke"


def with_batch(spec: Path, batch: int, directory: Path) -> Path:
    """A copy of `spec` (beside it, so relative weight paths still resolve, or in
    `directory`) whose schedule says `batch <batch>` (the spec's last block is its
    schedule)."""
    text = spec.read_text()
    text = re.sub(r"\bbatch\s+\d+", "", text)
    end = text.rstrip().rfind("}")
    if not re.search(r"^schedule\b", text, flags=re.M) or end < 0:
        raise SystemExit(f"{spec}: expected a schedule block last in the file")
    out = directory / f"{spec.stem}-batch{batch}.cke"
    out.write_text(text[:end] + f"\n  batch {batch}\n" + text[end:])
    return out


def measure(spec: Path, batch: int, threads: int, prompt: int, gen: int, repeat: int) -> dict:
    """Best-of-`repeat` seconds of `gen` decode steps of `batch` rows."""
    from ckeir.api import Program
    from ckeir.backends.llvm.engine import NativeEngine, NativeSlots

    with tempfile.TemporaryDirectory() as tmp:
        path = spec if batch == 1 else with_batch(spec, batch, Path(tmp))
        prog = Program(path, threads=threads, adaptive_threads=False)
    c = prog.config
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, c.vocab, prompt).astype(np.int32) for _ in range(batch)]
    if batch == 1:
        engine = NativeEngine(
            prog.lowered,
            prog.compiled,
            prog.weights,
            (c.layers, c.context, c.kv_dim),
            threads,
            prog.host,
            adaptive=False,
        )
    else:
        engine = NativeSlots(prog.lowered, prog.compiled, prog.weights, threads, adaptive=False)
    times, natives = [], []
    try:
        for _ in range(repeat + 1):  # the first run warms caches and page tables up
            if batch == 1:
                tokens = [engine.prefill(prompts[0], 0)[0]]
            else:
                tokens = [engine.prefill(s, p, 0)[0] for s, p in enumerate(prompts)]
            before = engine.native_seconds["decode"]
            t0 = time.perf_counter()
            for step in range(gen):
                pos = prompt + step
                if batch == 1:
                    tokens = [engine.decode(tokens[0], pos)[0]]
                else:
                    rows = [(s, tok, pos) for s, tok in enumerate(tokens)]
                    tokens = [argmax for argmax, _ in engine.decode(rows)]
            times.append(time.perf_counter() - t0)
            natives.append(engine.native_seconds["decode"] - before)
    finally:
        engine.close()
        prog.close()
    times, natives = times[1:], natives[1:]
    best = int(np.argmin(times))
    return {
        "batch": batch,
        "steps": gen,
        "seconds": times[best],
        "native_seconds": natives[best],
        "median_seconds": float(np.median(times)),
        "tok_s": batch * gen / times[best],
    }


def main() -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    p.add_argument("--batches", default="1,2,4,8", help="comma-separated B values")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens per sequence")
    p.add_argument("--gen", type=int, default=64, help="decode steps timed")
    args = p.parse_args()
    repeat = args.repeat or 3
    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        log(f"batch {batch}: compiling and decoding")
        results.append(measure(args.spec, batch, args.threads, args.prompt, args.gen, repeat))
    base = results[0]["tok_s"] if results and results[0]["batch"] == 1 else None
    rows = [
        [
            r["batch"],
            fmt(r["seconds"] / r["steps"] * 1e3, 2),
            fmt(r["native_seconds"] / r["steps"] * 1e3, 2),
            fmt(r["tok_s"]),
            fmt(r["tok_s"] / base, 2) if base else "",
            fmt(r["median_seconds"] / r["steps"] * 1e3, 2),
        ]
        for r in results
    ]
    print_table(
        f"Batched decode, {args.spec.name}, {args.threads} threads, prompts of {args.prompt}, "
        f"{args.gen} steps, best of {repeat}",
        ["B", "ms/step", "native ms/step", "tok/s (all rows)", "x B=1", "median ms/step"],
        rows,
        [host_line()],
    )
    if args.json:
        write_json(args.json, "batched", results, args={**vars(args), "spec": str(args.spec)})


if __name__ == "__main__":
    main()
