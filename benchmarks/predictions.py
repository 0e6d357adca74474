"""Predictions vs runs: decode seconds per token of SmolLM2-135M measured on local ranks and
predicted for this machine (`ckeir.runtime.machine.run_prediction`: measured read bandwidth,
the rates of the matmul kernels the programs run, barrier, dispatch and transport costs, each
collective as the ranks run it in native code, and the links as simulated), for
three placements (pipeline and tensor parallel on 2 ranks, and one rank) each at the spec's
link and at 1 Gbit/s + 1 ms.

    python benchmarks/predictions.py [--tokens 48] [--repeat 3] [--measure-now] [--json F]
                                     [--placement tensor] ...

The cells are run in turns (every cell once per round) and each keeps its best round: the
machine is shared, and a round slowed by another process says nothing about the model.
The machine's figures are measured once a round too (`machine.measuring_again`), and a
prediction takes the best of each.  `--measure-now` starts from a fresh cache directory,
so that only this run's measurements count."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import common_args, host_description, host_line, log, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLACEMENTS = [
    ("pipeline, 2 ranks", "specs/smollm2-pipeline.cke"),
    ("tensor parallel, 2 ranks", "specs/smollm2-tp.cke"),
    ("one rank", "specs/smollm2-135m.cke"),
]
SLOW_LINK = (1e9 / 8, 1e-3)  # 1 Gbit/s, 1 ms
PROMPT = [1, 2, 3, 4, 5, 6, 7, 8]


def link_settings(prog):
    """(name, the transport's LinkModel) pairs: the spec's declared links, and a slow one."""
    from ckeir.ranks import spec_links
    from ckeir.runtime.transport.base import LinkModel

    return [("spec's link", spec_links(prog)), ("1 Gbit/s, 1 ms", LinkModel.uniform(*SLOW_LINK))]


def measure(prog, links, tokens: int) -> tuple[float, int]:
    """Decode seconds per token of one run, and the mean context it ran at."""
    from ckeir.ranks import run_local

    out = run_local(prog, PROMPT, tokens, links=links)
    st = out["stats"]
    decoded = max(st["generated_tokens"] - 1, 1)
    return st["decode_seconds"] / decoded, int(st["prompt_tokens"] + decoded / 2)


def main(argv=None) -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--measure-now", action="store_true", help="measure the machine afresh")
    p.add_argument(
        "--placement",
        action="append",
        help="only the placements whose name contains this (repeatable; default: all three)",
    )
    args = p.parse_args(argv)
    if args.measure_now:
        os.environ["CKEIR_CACHE_DIR"] = tempfile.mkdtemp(prefix="ckeir-predictions-")
    import ckeir
    from ckeir.runtime.machine import measuring_again, run_prediction

    host = host_description()
    repeat = args.repeat or 3
    cells = []
    chosen = [
        (name, spec)
        for name, spec in PLACEMENTS
        if not args.placement or any(w in name for w in args.placement)
    ]
    for name, spec in chosen:
        prog = ckeir.compile(ROOT / spec, backend="reference")
        for link_name, links in link_settings(prog):
            cells.append({"placement": name, "link": link_name, "prog": prog, "links": links})
    for r in range(repeat):
        for c in cells:
            log(f"round {r + 1}/{repeat}: {c['placement']}, {c['link']}")
            seconds, context = measure(c["prog"], c["links"], args.tokens)
            c.setdefault("runs", []).append(seconds)
            c["context"] = context
        # the machine's figures too, once a round: a prediction takes the best of them as
        # the table takes the best round
        log(f"round {r + 1}/{repeat}: this machine's figures")
        with measuring_again():
            for c in cells[::2]:
                run_prediction(c["prog"], c["context"], c["links"])
    rows, results = [], []
    for c in cells:
        pred = run_prediction(c["prog"], c["context"], c["links"])
        best = min(c["runs"])
        predicted = pred.decode_seconds_per_token
        rows.append(
            [
                c["placement"],
                c["link"],
                f"{best * 1e3:.2f}",
                f"{predicted * 1e3:.2f}",
                f"{best / predicted:.2f}",
            ]
        )
        results.append(
            {
                "placement": c["placement"],
                "link": c["link"],
                "measured_s_per_token": c["runs"],
                "predicted_s_per_token": predicted,
                "basis": pred.basis,
            }
        )
    print(host_line(host))
    print_table(
        f"SmolLM2-135M decode on local ranks, best of {repeat} rounds, {args.tokens} tokens",
        ["placement", "link", "measured ms/token", "predicted ms/token", "measured ÷ predicted"],
        rows,
        notes=[
            f"predicted for this machine, {r['placement']}: " + _basis_note(r["basis"])
            for r in results[::2]
        ],
    )
    if args.json:
        write_json(args.json, "predictions", results, host=host, repeat=repeat)


def _basis_note(basis: dict) -> str:
    rates = ", ".join(
        f"{k} {v / 1e9:.1f} GB/s" for k, v in basis.get("matmul_bytes_per_second", {}).items()
    )
    over = basis.get("overheads", {})
    shared = basis.get("rank 0", {}).get("shared", 1.0)
    native = basis.get("collective_seconds")
    collectives = (
        "collectives in native code, one call per token: "
        + ", ".join(
            f"{sig.split('(')[0]} {sig.split('bytes = ')[1].split(' ')[0]} B {t * 1e6:.1f} us"
            for sig, t in sorted(native.items())
        )
        if native
        else f"segment dispatch {over.get('segment', 0) * 1e6:.1f} us"
        + (
            f", all-reduce step {over['collective'] * 1e6:.1f} us (from Python)"
            if over.get("collective")
            else ""
        )
    )
    return (
        f"{basis['threads_per_rank']} thread(s) a rank; matmul kernels {rates}"
        + (f" (x {shared:.2f}: ranks streaming at once)" if shared < 1 else "")
        + f"; barrier {basis.get('barrier_seconds', 0) * 1e6:.2f} us, message "
        f"{over.get('message', 0) * 1e6:.1f} us; {collectives} (local shared memory)"
    )


if __name__ == "__main__":
    main()
