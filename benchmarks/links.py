"""Links that behave like links: local ranks whose messages are delayed as the spec's link
(latency + bytes / bandwidth) — this machine cannot shape loopback traffic (no tc netem) — and
the predictions for the run as it ran (`ckeir.runtime.machine.run_prediction`: this machine's
measured figures, the links as simulated) next to what it measured: each hop, and a decode
token.

    python benchmarks/links.py [--spec specs/tiny.cke] [--tokens 48] [--json out.json]

The spec's decode should be a pipeline (hops on the critical path); its link settings are
replaced by each row of LINKS in turn."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import common_args, host_line, print_table, write_json  # noqa: E402

import ckeir  # noqa: E402
from ckeir.ranks import run_local, spec_links  # noqa: E402
from ckeir.reports.run import hop_figures  # noqa: E402
from ckeir.runtime.machine import run_prediction  # noqa: E402

LINKS = [("10Gbit/s", "50us"), ("1Gbit/s", "500us"), ("100Mbit/s", "2ms")]
ROOT = Path(__file__).resolve().parents[1]


def with_link(text: str, bw: str, latency: str) -> str:
    return re.sub(
        r"link (\w+) <-> (\w+) \{[^}]*\}",
        lambda m: f"link {m[1]} <-> {m[2]} {{ bw {bw}; latency {latency} }}",
        text,
    )


def main(argv=None) -> None:
    p = common_args(__doc__)
    p.add_argument("--spec", default=str(ROOT / "specs/tiny.cke"))
    p.add_argument("--tokens", type=int, default=48)
    args = p.parse_args(argv)
    spec = Path(args.spec)
    rows, results = [], []
    for bw, lat in LINKS:
        d = Path(tempfile.mkdtemp())
        path = d / spec.name
        path.write_text(with_link(spec.read_text(), bw, lat))
        for f in spec.parent.glob("*.cke"):  # imports next to the spec
            if f.name != spec.name:
                (d / f.name).write_text(f.read_text())
        prog = ckeir.compile(path, backend="reference")
        links = spec_links(prog)
        out = run_local(prog, [1, 2, 3, 4], args.tokens, links=links)
        st = out["stats"]
        decoded = max(st["generated_tokens"] - 1, 1)
        measured = st["decode_seconds"] / decoded
        pred = run_prediction(prog, st["prompt_tokens"] + decoded // 2, links)
        token = pred.decode_seconds_per_token
        for (a, b), h in sorted(hop_figures(out["ranks"]).items()):
            pred_hop = pred.hop_seconds(a, b, h["bytes"])
            rows.append(
                [
                    f"{bw}, {lat}",
                    f"{a}->{b}",
                    f"{h['bytes']:.0f}",
                    f"{pred_hop * 1e6:.0f}",
                    f"{h['seconds'] * 1e6:.0f}",
                    f"{h['seconds'] / pred_hop:.2f}",
                    f"{token * 1e6:.0f}",
                    f"{measured * 1e6:.0f}",
                    f"{measured / token:.2f}",
                ]
            )
        results.append(
            {
                "link": [bw, lat],
                "hops": {f"{a}->{b}": h for (a, b), h in hop_figures(out["ranks"]).items()},
                "predicted_token_s": token,
                "measured_token_s": measured,
            }
        )
    print(host_line())
    print_table(
        f"decode of {spec.name} on local ranks with simulated links",
        [
            "link",
            "hop",
            "bytes",
            "pred hop us",
            "meas hop us",
            "meas/pred",
            "pred token us",
            "meas token us",
            "meas/pred",
        ],
        rows,
    )
    if args.json:
        write_json(args.json, "links", results)


if __name__ == "__main__":
    main()
