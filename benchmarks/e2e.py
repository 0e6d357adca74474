"""End to end: prefill and decode speed of one model (default SmolLM2-135M Q4_1) with ckeir,
llama.cpp (llama-cpp-python, same GGUF) and the numpy anchor, side by side in one run, against
the decode limit = measured DRAM read bandwidth ÷ weight bytes read per token.

All three are driven by the same loop (`ckeir.runtime.generate.generate_stream`, which times
prefill and each decode call with `time.perf_counter` around the engine call): a 128-token
prompt in one prefill call, then 128 greedy decode steps, best of N.  llama.cpp runs through
a small adapter (`LlamaCppEngine`): prefill = `Llama.eval(prompt)`, decode = `Llama.eval([t])`
one token at a time, greedy = argmax of its logits — wall-clock timing including its Python
wrapper, like ckeir's; llama.cpp's own counters (`llama_perf_context`) go into the JSON.

It also checks greedy agreement (the first tokens after "Once upon a time", or after a fixed
prompt for a model without a tokenizer) and, unless `--no-profile`, splits ckeir's decode step
into kernel time, barrier waits and time outside the native program (see `profile_decode`).

    python -m benchmarks.e2e [--spec specs/smollm2-135m.cke] [--threads 1,2] [--quick] [--json FILE]
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import re
import sys
import time
from pathlib import Path

import attrs
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    REPO,
    Timing,
    common_args,
    fmt,
    host_description,
    host_line,
    log,
    print_table,
    ratio,
    write_json,
)
from benchmarks.numpy_llama import Hparams, NumpyLlama, blas_threads, have_threadpoolctl
from benchmarks.stream import measure_bandwidth
from ckeir.errors import CkeError
from ckeir.runtime.generate import GenerationStats, generate_stream

DEFAULT_SPEC = REPO / "specs" / "smollm2-135m.cke"
AGREE_PROMPT = "Once upon a time"
AGREE_TOKENS = 16
LLAMA_INSTALL = 'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install "llama-cpp-python>=0.3"'
# A prompt of ordinary prose, repeated and cut to the prompt length.
PROSE = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, counting the "
    "steps as his father had taught him. From the lantern room he could see the whole bay: "
    "the fishing boats returning with their catch, the gulls wheeling over the harbour, and "
    "the long grey line of the breakwater where the children raced each other after school. "
)


# ---- engines ----------------------------------------------------------------------------------


class LlamaCppEngine:
    """llama.cpp behind the engine interface of `ckeir.runtime.generate` (greedy, argmax)."""

    max_prefill = 512

    def __init__(self, model_path, threads: int, n_ctx: int = 512):
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=str(model_path),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=n_ctx,
            n_batch=512,
            verbose=False,
        )
        self.context = n_ctx
        self.vocab = self.llm.n_vocab()
        import llama_cpp

        self._llama_cpp = llama_cpp

    def _eval(self, ids, pos: int) -> tuple[int, np.ndarray]:
        if pos != self.llm.n_tokens:
            raise RuntimeError(f"llama.cpp is at position {self.llm.n_tokens}, not {pos}")
        self.llm.eval([int(t) for t in ids])
        # without logits_all, Llama.eval keeps no scores: read the last row from llama.cpp
        row = self._llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        logits = np.ctypeslib.as_array(row, shape=(self.vocab,)).copy()
        return int(np.argmax(logits)), logits

    def prefill(self, ids, pos: int):
        return self._eval(ids, pos)

    def decode(self, token: int, pos: int):
        return self._eval([token], pos)

    def reset(self) -> None:
        self.llm.reset()
        self._llama_cpp.llama_perf_context_reset(self.llm.ctx)

    def perf(self) -> dict | None:
        """llama.cpp's own counters since the last reset (ms and token counts)."""
        p = self._llama_cpp.llama_perf_context(self.llm.ctx)
        return {
            "prompt_ms": p.t_p_eval_ms,
            "prompt_tokens": p.n_p_eval,
            "eval_ms": p.t_eval_ms,
            "eval_tokens": p.n_eval,
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.llm.close()


def llama_cpp_version() -> str | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    return getattr(llama_cpp, "__version__", "?")


# ---- measuring ---------------------------------------------------------------------------------


@attrs.define
class Run:
    """One implementation at one thread count."""

    impl: str
    threads: int
    prefill: Timing | None = None
    decode: Timing | None = None  # seconds for the whole `gen` decode steps
    gen: int = 0
    prompt: int = 0
    greedy: list[int] | None = None
    error: str | None = None
    extra: dict = attrs.field(factory=dict)

    @property
    def prefill_tps(self) -> float | None:
        return self.prompt / self.prefill.best if self.prefill else None

    @property
    def decode_tps(self) -> float | None:
        return self.gen / self.decode.best if self.decode else None

    def as_dict(self) -> dict:
        d = attrs.asdict(self, recurse=False)
        d.update(prefill_tps=self.prefill_tps, decode_tps=self.decode_tps)
        return d


IDLE_BETWEEN = 0.3  # seconds between two implementations' passes: idle BLAS / ggml threads
# spin for a while after their work, and would otherwise steal a core from the next one


@attrs.define
class Subject:
    """One implementation at one thread count, ready to run: its engine and the context its
    calls need (numpy: the BLAS thread limit)."""

    run: Run
    engine: object
    threads_ctx: object = contextlib.nullcontext
    perf: object = None


def measure(subjects: list[Subject], vocab: int, prompt, gen: int, repeat: int) -> None:
    """Best of `repeat` passes (prefill of `prompt`, then `gen` decode steps) through ckeir's
    own generation loop.  The implementations take turns pass by pass, so that load from other
    processes falls on all of them alike; each first gets an untimed warm-up."""
    times = {id(s): ([], []) for s in subjects}
    for s in subjects:
        with s.threads_ctx():
            list(generate_stream(s.engine, prompt[:8], 4, vocab))
    for _ in range(repeat):
        for s in subjects:
            time.sleep(IDLE_BETWEEN)
            stats = GenerationStats()
            with s.threads_ctx():
                for _ in generate_stream(s.engine, prompt, gen + 1, vocab, stats):
                    pass
            times[id(s)][0].append(stats.prefill_seconds)
            times[id(s)][1].append(stats.decode_seconds)
            if s.perf is not None:
                s.run.extra.setdefault("own_counters", []).append(s.perf())
    for s in subjects:
        pre, dec = times[id(s)]
        s.run.prefill, s.run.decode = Timing(tuple(pre)), Timing(tuple(dec))
        s.run.prompt, s.run.gen = len(prompt), gen


def greedy(engine, vocab: int, ids, n: int = AGREE_TOKENS) -> list[int]:
    return list(generate_stream(engine, ids, n, vocab))


def agreement(tokens: list[int] | None, ref: list[int] | None) -> str:
    if not tokens or not ref:
        return "—"
    same = next((i for i, (a, b) in enumerate(zip(tokens, ref, strict=False)) if a != b), None)
    n = min(len(tokens), len(ref))
    return f"{n}/{n}" if same is None else f"{same}/{n}"


# ---- weight bytes and the decode limit ---------------------------------------------------------


def gguf_tensor_bytes(path) -> dict[str, tuple[int, int]]:
    """name -> (bytes, rows) of every tensor of a GGUF file."""
    from gguf import GGUFReader

    return {t.name: (int(t.n_bytes), int(t.shape[-1])) for t in GGUFReader(str(path)).tensors}


def array_tensor_bytes(weights: dict[str, np.ndarray]) -> dict[str, tuple[int, int]]:
    return {n: (w.nbytes, w.shape[0]) for n, w in weights.items()}


def decode_bytes(tensors: dict[str, tuple[int, int]]) -> int:
    """Weight bytes one decode token reads: every matrix and norm gain, one row of the
    embedding table, and the whole table again when it doubles as the LM head (tied)."""
    emb_bytes, vocab = tensors["token_embd.weight"]
    rest = sum(b for n, (b, _) in tensors.items() if n != "token_embd.weight")
    tied = "output.weight" not in tensors
    return rest + emb_bytes // vocab + (emb_bytes if tied else 0)


# ---- where ckeir's decode step goes -------------------------------------------------------------
#
# The lowered program is one native function per phase calling one kernel per op with a barrier
# between dependent ops.  `instrument` rewrites that function's text so that every thread adds
# the cycles (llvm.readcyclecounter) spent in each call to a per-thread counter of the call's
# kernel family, plus the whole function's cycles; the decode step's wall time minus the native
# time is what Python and the pool dispatch cost.

_CALL = re.compile(r"^\s*call void @([\w.]+)\(")
_SLOTS = 32  # counters per thread; the last is the whole program
_PROF_THREADS = 64


def kernel_family(name: str) -> str:
    """`matmul_q4_1_n576_k576_t64x576_v16` -> `matmul`; `cke_barrier` -> `barrier`."""
    if name.startswith("llvm."):
        return name.split(".")[1]
    if name == "cke_barrier":
        return "barrier"
    parts = []
    for p in name.split("_"):
        if any(ch.isdigit() for ch in p):
            break
        parts.append(p)
    return "_".join(parts) or name


def instrument(text: str, symbol: str) -> tuple[str, list[str]]:
    """`text` with @symbol's kernel calls timed; returns the text and the family of each
    counter slot."""
    lines = text.split("\n")
    start = next(
        (i for i, ln in enumerate(lines) if re.match(rf"define .*@{re.escape(symbol)}\(", ln)),
        None,
    )
    if start is None:
        raise ValueError(f"no function @{symbol} in the lowered module")
    families: list[str] = []
    out = lines[:start]
    n = 0
    for i in range(start, len(lines)):
        ln = lines[i]
        if ln == "}":
            out += lines[i:]
            break
        m = _CALL.match(ln)
        if ln.strip() == "body:":
            out += [
                ln,
                "  %ckp.tid = sext i32 %tid to i64",
                f"  %ckp.off = mul i64 %ckp.tid, {_SLOTS}",
                "  %ckp.base = getelementptr inbounds i64, ptr @ckp_counters, i64 %ckp.off",
                "  %ckp.t0 = call i64 @llvm.readcyclecounter()",
            ]
        elif ln.strip() == "ret void":
            out += [*_accumulate("end", "%ckp.t0", _SLOTS - 1), ln]
        elif m:
            fam = kernel_family(m.group(1))
            if fam not in families:
                families.append(fam)
            slot = families.index(fam)
            if slot >= _SLOTS - 1:
                raise ValueError("too many kernel families to profile")
            out += [f"  %ckp.a{n} = call i64 @llvm.readcyclecounter()", ln]
            out += _accumulate(str(n), f"%ckp.a{n}", slot)
            n += 1
        else:
            out.append(ln)
    if not n:
        raise ValueError(f"found no kernel calls in @{symbol}")
    out += [
        f"@ckp_counters = global [{_SLOTS * _PROF_THREADS} x i64] zeroinitializer, align 64",
        "declare i64 @llvm.readcyclecounter()",
        "define ptr @ckp_counters_ptr() {\n  ret ptr @ckp_counters\n}",
        "define i64 @ckp_cycles() {\n  %t = call i64 @llvm.readcyclecounter()\n  ret i64 %t\n}",
        "",
    ]
    return "\n".join(out), families


def _accumulate(tag: str, since: str, slot: int) -> list[str]:
    return [
        f"  %ckp.b{tag} = call i64 @llvm.readcyclecounter()",
        f"  %ckp.d{tag} = sub i64 %ckp.b{tag}, {since}",
        f"  %ckp.p{tag} = getelementptr inbounds i64, ptr %ckp.base, i64 {slot}",
        f"  %ckp.o{tag} = load i64, ptr %ckp.p{tag}, align 8",
        f"  %ckp.s{tag} = add i64 %ckp.o{tag}, %ckp.d{tag}",
        f"  store i64 %ckp.s{tag}, ptr %ckp.p{tag}, align 8",
    ]


def _cycles_per_second(cycles) -> float:
    c0, t0 = cycles(), time.perf_counter()
    time.sleep(0.2)
    return (cycles() - c0) / (time.perf_counter() - t0)


def profile_decode(
    prog, threads: int, prompt, gen: int, matmul_bytes: int, repeat: int = 3
) -> dict:
    """Per decode token: wall time, the native program's time on thread 0, and thread 0's
    time in each kernel family and in barrier waits (instrumented build of the program)."""
    from ckeir.backends.llvm.engine import NativeEngine
    from ckeir.backends.llvm.jit import compile_ir

    symbol = prog.lowered.programs["decode"].symbol
    text, families = instrument(prog.lowered.text, symbol)
    cm = compile_ir(text, prog.host)
    counters = (ctypes.c_uint64 * (_SLOTS * _PROF_THREADS)).from_address(
        ctypes.CFUNCTYPE(ctypes.c_void_p)(cm.address("ckp_counters_ptr"))()
    )
    hz = _cycles_per_second(ctypes.CFUNCTYPE(ctypes.c_uint64)(cm.address("ckp_cycles")))
    c = prog.config
    engine = NativeEngine(
        attrs.evolve(prog.lowered, text=text),
        cm,
        prog.weights,
        (c.layers, c.context, c.kv_dim),
        threads,
        prog.host,
    )
    best = None
    try:
        list(generate_stream(engine, prompt[:8], 4, c.vocab))
        for _ in range(repeat):  # keep the quietest run: one burst of load skews a breakdown
            engine.reset()
            token, _ = engine.prefill(np.asarray(prompt, dtype=np.int32), 0)
            ctypes.memset(counters, 0, ctypes.sizeof(counters))
            pos, t0 = len(prompt), time.perf_counter()
            for _ in range(gen):
                token, _ = engine.decode(token, pos)
                pos += 1
            wall = (time.perf_counter() - t0) / gen
            if best is None or wall < best[0]:
                best = (wall, list(counters))
    finally:
        engine.close()
    wall, snapshot = best
    per_thread = []
    for tid in range(threads):
        row = snapshot[tid * _SLOTS : (tid + 1) * _SLOTS]
        fam = {f: row[i] / hz / gen for i, f in enumerate(families)}
        fam["native"] = row[_SLOTS - 1] / hz / gen
        per_thread.append(fam)
    t0f = per_thread[0]
    matmul = sum(v for f, v in t0f.items() if "matmul" in f or "gemv" in f)
    return {
        "threads": threads,
        "wall_s": wall,
        "native_s": t0f["native"],
        "outside_native_s": wall - t0f["native"],
        "matmul_s": matmul,
        "barrier_s": t0f.get("barrier", 0.0),
        # the one-pass kernel, or the split one's parts and combine, and the cache store
        "attention_s": sum(v for f, v in t0f.items() if f.startswith(("attention", "kv_store"))),
        "matmul_gb_per_s": matmul_bytes / matmul / 1e9 if matmul else None,
        "families_s": per_thread,
        "cycles_per_s": hz,
    }


# ---- the run -----------------------------------------------------------------------------------


def make_prompt(tokenizer, vocab: int, length: int) -> list[int]:
    if tokenizer is None:
        rng = np.random.default_rng(0)
        return [int(x) for x in rng.integers(1, vocab, size=length)]
    ids = tokenizer.encode(PROSE)
    return (ids * (length // len(ids) + 1))[:length]


def numpy_model(job, prog, gguf_path, context: int) -> NumpyLlama:
    """The numpy anchor: from the GGUF itself when the spec has one, else from the weights
    ckeir generated (dequantized to f32)."""
    if gguf_path is not None:
        return NumpyLlama.from_gguf(gguf_path, context)
    from ckeir.runtime.weights import dequantize_rows

    c = job.config
    hp = Hparams(
        vocab=c.vocab,
        hidden=c.hidden,
        layers=c.layers,
        heads=c.heads,
        kv_heads=c.kv_heads,
        ffn=c.ffn,
        context=c.context,
        norm_eps=c.norm_eps,
        rope_theta=c.rope_theta,
        rope_style=c.rope_style,
    )
    fmts = prog.weight_formats
    w = {n: dequantize_rows(a, fmts.get(n, "f32")) for n, a in prog.weights.items()}
    if c.tie_embeddings:
        w.pop("output.weight", None)
    return NumpyLlama(hp, w, context)


def main(argv=None) -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--spec", default=str(DEFAULT_SPEC), help="the model's .cke spec")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="smoke run: 32 + 16 tokens, N = 1")
    p.add_argument("--no-llama", action="store_true", help="skip llama.cpp")
    p.add_argument("--no-numpy", action="store_true", help="skip the numpy anchor")
    p.add_argument("--no-profile", action="store_true", help="skip ckeir's decode breakdown")
    args = p.parse_args(argv)
    if args.quick:
        args.prompt_tokens, args.gen_tokens = 32, 16
    repeat = args.repeat or (1 if args.quick else 3)
    threads = [int(x) for x in args.threads.split(",")]

    import ckeir
    from ckeir import driver

    host = host_description()
    log(
        f"e2e: {args.spec}, prompt {args.prompt_tokens}, decode {args.gen_tokens}, best of {repeat}"
    )
    job = driver.resolve(args.spec)
    cfg = job.config
    gguf_path = job.model_file.path if job.model.weights.kind == "gguf" else None
    tokenizer = None
    if gguf_path is not None:
        from ckeir.runtime.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_gguf(job.model_file)
    prompt = make_prompt(tokenizer, cfg.vocab, args.prompt_tokens)
    agree_ids = tokenizer.encode(AGREE_PROMPT) if tokenizer else prompt[:4]
    agree_label = f'"{AGREE_PROMPT}"' if tokenizer else "the first 4 prompt ids"
    context = min(cfg.context, 512)
    if args.prompt_tokens + args.gen_tokens + 1 > context:
        sys.exit(f"prompt + generated tokens must stay within {context}")

    log("measuring read bandwidth")
    bandwidth = {t: measure_bandwidth(t) for t in threads}  # again at the end; the best counts
    runs: list[Run] = []
    profiles: list[dict] = []

    # ckeir compiles once; its engine is rebuilt per thread count (same code and weights)
    prog, ckeir_error = None, None
    log("compiling with ckeir")
    try:
        prog = ckeir.compile(args.spec, threads=threads[0])
        _ = prog.weights
    except CkeError as e:
        ckeir_error = str(e).splitlines()[0]
    if gguf_path is None and prog is None:
        sys.exit(f"ckeir failed on a spec without a GGUF, nothing to compare: {ckeir_error}")
    tensors = gguf_tensor_bytes(gguf_path) if gguf_path else array_tensor_bytes(prog.weights)
    bytes_tok = decode_bytes(tensors)
    matmul_bytes = sum(
        b for n, (b, _) in tensors.items() if n.endswith(".weight") and "norm" not in n
    ) - (tensors["token_embd.weight"][0] if "output.weight" in tensors else 0)
    llama_version = llama_cpp_version()
    model, numpy_bytes = None, None
    if not args.no_numpy:
        log("loading the numpy anchor")
        model = numpy_model(job, prog, gguf_path, context)
        numpy_bytes = model.weight_bytes()

    for t in threads:
        subjects: list[Subject] = []
        run = Run("ckeir", t)
        runs.append(run)
        if prog is None:
            run.error = ckeir_error
        else:
            prog.close()
            prog.threads = t
            subjects.append(Subject(run, prog.engine))
        llama = None
        if not args.no_llama:
            run = Run("llama.cpp", t)
            runs.append(run)
            if gguf_path is None:
                run.error = "n/a (random-weight spec: llama.cpp needs a GGUF)"
            elif llama_version is None:
                run.error = f"not installed ({LLAMA_INSTALL})"
            else:
                llama = LlamaCppEngine(gguf_path, t, n_ctx=512)
                subjects.append(Subject(run, llama, perf=llama.perf))
        if model is not None:
            run = Run("numpy", t)
            runs.append(run)
            subjects.append(Subject(run, model, functools.partial(blas_threads, t)))
            if not have_threadpoolctl():
                run.extra["note"] = "threadpoolctl missing: BLAS used its default threads"
        log(f"{t} thread(s): {', '.join(s.run.impl for s in subjects)}")
        measure(subjects, cfg.vocab, prompt, args.gen_tokens, repeat)
        for s in subjects:
            with s.threads_ctx():
                s.run.greedy = greedy(s.engine, cfg.vocab, agree_ids)
        if llama is not None:
            llama.close()
        if prog is not None:
            prog.close()
            if not args.no_profile:
                log(f"profiling ckeir's decode step, {t} thread(s)")
                try:
                    profiles.append(
                        profile_decode(prog, t, prompt, args.gen_tokens, matmul_bytes, repeat)
                    )
                except (ValueError, CkeError) as e:
                    log(f"profile skipped: {e}")
    del model
    bandwidth = {t: max(bandwidth[t], measure_bandwidth(t)) for t in threads}

    report(
        args, host, agree_label, runs, profiles, bandwidth, bytes_tok, numpy_bytes, repeat, threads
    )
    if args.json:
        write_json(
            args.json,
            "e2e",
            [r.as_dict() for r in runs],
            host,
            spec=str(args.spec),
            prompt_tokens=args.prompt_tokens,
            gen_tokens=args.gen_tokens,
            repeat=repeat,
            read_bandwidth_bytes_per_s=bandwidth,
            weight_bytes_per_token=bytes_tok,
            numpy_weight_bytes_per_token=numpy_bytes,
            llama_cpp_version=llama_version,
            ckeir_decode_profile=profiles,
            agreement_prompt=agree_label,
        )
    if prog is not None:
        prog.close()


def report(
    args, host, agree_label, runs, profiles, bandwidth, bytes_tok, numpy_bytes, repeat, threads
):
    by = {(r.impl, r.threads): r for r in runs}
    rows, errors = [], {}
    for t in threads:
        ck = by.get(("ckeir", t))
        ref = by.get(("llama.cpp", t))
        ref = ref if ref and ref.greedy else by.get(("numpy", t))
        for impl in ("ckeir", "llama.cpp", "numpy"):
            r = by.get((impl, t))
            if r is None:
                continue
            if r.error:
                short = r.error.split(" (")[0] if r.error.startswith(("not", "n/a")) else "failed"
                rows.append([impl, t, f"{short} *", "", "", "", "", "", ""])
                errors.setdefault(f"* {impl}: {r.error}", None)
                continue
            nbytes = numpy_bytes if impl == "numpy" else bytes_tok
            limit = bandwidth[t] / nbytes
            rows.append(
                [
                    impl,
                    t,
                    fmt(r.prefill_tps),
                    fmt(r.decode_tps),
                    fmt(1e3 / r.decode_tps, 2),
                    f"{r.decode_tps / limit:.0%}",
                    "" if impl == "ckeir" else ratio(ck and ck.prefill_tps, r.prefill_tps),
                    "" if impl == "ckeir" else ratio(ck and ck.decode_tps, r.decode_tps),
                    "" if r is ref else agreement(r.greedy, ref.greedy if ref else None),
                ]
            )
    ref_name = "llama.cpp" if any(r.impl == "llama.cpp" and r.greedy for r in runs) else "numpy"
    print_table(
        f"End to end: {Path(args.spec).name}, prompt {args.prompt_tokens} tokens, "
        f"{args.gen_tokens} decode steps (best of {repeat})",
        [
            "impl",
            "thr",
            "prefill tok/s",
            "decode tok/s",
            "ms/token",
            "of limit",
            "ckeir ÷ (prefill)",
            "ckeir ÷ (decode)",
            f"greedy = {ref_name}",
        ],
        rows,
        notes=[
            f"host: {host_line(host)}",
            "decode tok/s = decode steps ÷ their wall time (Python loop included, every impl); "
            "'of limit' = decode tok/s ÷ (read bandwidth ÷ weight bytes per token), with the "
            "impl's own bytes (numpy: f32 weights).",
            f"greedy: first {AGREE_TOKENS} tokens after {agree_label}: length of the prefix "
            f"equal to {ref_name}'s at the same thread count.",
            *errors,
        ],
    )
    lim_rows = [
        [
            t,
            fmt(bandwidth[t] / 1e9),
            fmt(bytes_tok / 1e6, 2),
            fmt(bandwidth[t] / bytes_tok),
            fmt(numpy_bytes / 1e6, 1) if numpy_bytes else "—",
            fmt(bandwidth[t] / numpy_bytes) if numpy_bytes else "—",
        ]
        for t in threads
    ]
    print_table(
        "Decode limit = read bandwidth ÷ weight bytes per token",
        [
            "threads",
            "read GB/s",
            "MB/token",
            "limit tok/s",
            "numpy f32 MB/token",
            "numpy limit tok/s",
        ],
        lim_rows,
        notes=[
            "bytes per token: every matrix and norm gain + one embedding row (+ the whole "
            "embedding table when it is also the LM head); read bandwidth: "
            "benchmarks.stream.measure_bandwidth, best of 5 "
            "at the start and 5 at the end of the run."
        ],
    )
    if profiles:
        prow = []
        for pr in profiles:
            ms = 1e3
            other = pr["native_s"] - pr["matmul_s"] - pr["attention_s"] - pr["barrier_s"]
            prow.append(
                [
                    pr["threads"],
                    fmt(pr["wall_s"] * ms, 2),
                    fmt(pr["native_s"] * ms, 2),
                    fmt(pr["matmul_s"] * ms, 2),
                    fmt(pr["attention_s"] * ms, 2),
                    fmt(other * ms, 2),
                    fmt(pr["barrier_s"] * ms, 2),
                    fmt(pr["outside_native_s"] * ms, 2),
                    fmt(pr["matmul_gb_per_s"]),
                ]
            )
        print_table(
            f"ckeir decode step, ms per token on thread 0 (instrumented build, quickest of {repeat} runs)",
            [
                "threads",
                "wall",
                "native",
                "matmul",
                "attention",
                "other kernels",
                "barrier wait",
                "outside native",
                "matmul GB/s",
            ],
            prow,
            notes=[
                "native = the decode program from entry to return on thread 0; outside native "
                "= wall − native (Python engine call, pool dispatch, logits copy); matmul GB/s = "
                "matrix bytes ÷ thread 0's matmul time. Timers (rdtsc around each kernel call) "
                "add a few µs per token."
            ],
        )


if __name__ == "__main__":
    main()
