"""Batched decode, like llama.cpp's `llama-batched-bench`: aggregate decode tok/s of one rank
when B sequences decode together (issue 13: a step reads the weights once for B tokens).

For each B the spec is compiled with `batch B`; B prompts of `--prompt` tokens are prefilled
one per slot, then `--gen` decode steps of B rows each run back to back through
`NativeSlots.decode` (greedy: each row is fed its own argmax), best of N.  B = 1 is the
one-sequence program (`NativeEngine.decode`), what `generate` runs.  Aggregate tok/s =
B x steps / seconds; the step's time is wall time around the engine call (Python included),
and `native` is the part inside the native program.

llama.cpp (llama-cpp-python, same GGUF, same threads) runs the same shape through its batch
API: one context of B sequences (`n_seq_max = B`, one KV cache), each prompt prefilled as
its sequence, then `--gen` calls of `llama_decode` with one token per sequence, greedy on
each row's logits, best of N.  It runs in a child process (a llama.cpp build may crash on
some CPUs: the table then says so); `--no-llama` skips it.

    python -m benchmarks.batched [--spec specs/smollm2-135m.cke] [--batches 1,2,4,8]
                                 [--threads 2] [--prompt 32] [--gen 64] [--repeat 3]
                                 [--no-llama] [--json FILE]
"""

from __future__ import annotations

import json
import re
import subprocess
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


def model_file(spec: Path) -> Path | None:
    """The spec's GGUF (llama.cpp's side needs one), or None."""
    from ckeir import driver

    path = getattr(driver.resolve(spec).model_file, "path", None)
    return path if path is not None and path.suffix == ".gguf" else None


def llama_columns(r: dict) -> list[str]:
    llama = r.get("llama_cpp")
    if llama is None:
        return ["", ""]
    if "error" in llama:
        return [llama["error"][:40], ""]
    return [fmt(llama["tok_s"]), fmt(r["tok_s"] / llama["tok_s"], 2)]


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


def llama_cpp_batched(
    gguf: Path, batch: int, threads: int, prompt: int, gen: int, repeat: int
) -> dict:
    """llama.cpp's side of one B, measured in a child process (`llama_worker`): its result,
    or {"error": ...}."""
    cmd = [sys.executable, "-m", "benchmarks.batched", "--llama-worker", str(gguf)]
    cmd += [str(x) for x in (batch, threads, prompt, gen, repeat)]
    try:
        run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        return {"error": f"exit {run.returncode}: {run.stderr.strip()[-200:]}"}
    return json.loads(lines[-1])


def llama_worker(gguf: str, batch: int, threads: int, prompt: int, gen: int, repeat: int):
    """Prints one JSON line: best-of-`repeat` seconds of `gen` llama_decode calls of one
    token for each of `batch` sequences (after each sequence's prompt)."""
    import llama_cpp as L

    quiet = L.llama_log_callback(lambda level, text, data: None)
    L.llama_log_set(quiet, None)
    L.llama_backend_init()
    model = L.llama_model_load_from_file(gguf.encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx = batch * (prompt + gen + 16)
    cp.n_batch = cp.n_ubatch = max(512, prompt, batch)
    cp.n_seq_max, cp.kv_unified = batch, True
    cp.n_threads = cp.n_threads_batch = threads
    ctx = L.llama_init_from_model(model, cp)
    vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    lot = L.llama_batch_init(max(prompt, batch), 0, batch)

    def decode(items) -> list[int]:  # items: (token, pos, seq, logits?) -> argmax per row
        lot.n_tokens = len(items)
        for i, (tok, pos, seq, out) in enumerate(items):
            lot.token[i], lot.pos[i], lot.n_seq_id[i] = tok, pos, 1
            lot.seq_id[i][0], lot.logits[i] = seq, out
        if L.llama_decode(ctx, lot) != 0:
            raise SystemExit("llama_decode failed")
        rows = [i for i, item in enumerate(items) if item[3]]
        return [
            int(np.argmax(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(vocab,))))
            for i in rows
        ]

    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 1000, prompt).tolist() for _ in range(batch)]
    times = []
    for _ in range(repeat + 1):
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        tokens = []
        for s, ids in enumerate(prompts):
            tokens += decode([(t, i, s, i == prompt - 1) for i, t in enumerate(ids)])
        t0 = time.perf_counter()
        for step in range(gen):
            tokens = decode([(tok, prompt + step, s, True) for s, tok in enumerate(tokens)])
        times.append(time.perf_counter() - t0)
    best = min(times[1:])
    print(json.dumps({"seconds": best, "tok_s": batch * gen / best}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--llama-worker":
        gguf, *numbers = sys.argv[2:]
        llama_worker(gguf, *(int(x) for x in numbers))
        return
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    p.add_argument("--batches", default="1,2,4,8", help="comma-separated B values")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens per sequence")
    p.add_argument("--gen", type=int, default=64, help="decode steps timed")
    p.add_argument("--no-llama", action="store_true", help="skip llama.cpp's side")
    args = p.parse_args()
    repeat = args.repeat or 3
    gguf = None if args.no_llama else model_file(args.spec)
    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        log(f"batch {batch}: compiling and decoding")
        r = measure(args.spec, batch, args.threads, args.prompt, args.gen, repeat)
        if gguf is not None:
            log(f"batch {batch}: llama.cpp")
            r["llama_cpp"] = llama_cpp_batched(
                gguf, batch, args.threads, args.prompt, args.gen, repeat
            )
        results.append(r)
    base = results[0]["tok_s"] if results and results[0]["batch"] == 1 else None
    rows = [
        [
            r["batch"],
            fmt(r["seconds"] / r["steps"] * 1e3, 2),
            fmt(r["native_seconds"] / r["steps"] * 1e3, 2),
            fmt(r["tok_s"]),
            fmt(r["tok_s"] / base, 2) if base else "",
            fmt(r["median_seconds"] / r["steps"] * 1e3, 2),
            *llama_columns(r),
        ]
        for r in results
    ]
    print_table(
        f"Batched decode, {args.spec.name}, {args.threads} threads, prompts of {args.prompt}, "
        f"{args.gen} steps, best of {repeat}",
        [
            "B",
            "ms/step",
            "native ms/step",
            "tok/s (all rows)",
            "x B=1",
            "median ms/step",
            "llama.cpp tok/s",
            "ckeir / llama.cpp",
        ],
        rows,
        [host_line()],
    )
    if args.json:
        write_json(args.json, "batched", results, args={**vars(args), "spec": str(args.spec)})


if __name__ == "__main__":
    main()
