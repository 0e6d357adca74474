"""What the run report and trace of a two-stage pipeline must show, checked against the IR
and against what the run did — shared by the local-rank and the MPI tests, which must see
the same evidence."""

import re
from pathlib import Path

from cli_runner import ckec

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs/tiny.cke"


def pipeline_spec(tmp_path) -> Path:
    """specs/tiny.cke with prefill placed like decode: n0 runs layers 0..1, n1 layers 2..3,
    so every activation row crosses 0 → 1 once and n1 (the last stage) picks the tokens."""
    text = TINY.read_text()
    tp = "phase prefill { stage [n0, n1] layers 0..3 }"
    assert tp in text
    path = tmp_path / "pipeline.cke"
    path.write_text(
        text.replace(tp, "phase prefill { stage n0 layers 0..1; stage n1 layers 2..3 }")
    )
    return path


def ir_send_bytes(spec: Path) -> int:
    """The `bytes` of rank 0's one dist.send in the decode program (one token's row)."""
    r = ckec(spec, "--emit=mlir", "--phase", "decode", "--rank", "0")
    assert r.returncode == 0, r.stderr
    (sent,) = re.findall(r'"dist\.send".*\{bytes = (\d+) : i64', r.stdout)
    return int(sent)


def check_pipeline_report(rep: dict, spec: Path, prompt: int, generated: int) -> None:
    """`rep`: the report of a run of `pipeline_spec` over `prompt` ids making `generated`
    tokens."""
    row = ir_send_bytes(spec)
    ranks = rep["ranks"]
    assert sorted(ranks) == ["0", "1"]
    assert [ranks[r]["node"] for r in ("0", "1")] == ["n0", "n1"]
    # rank 0 sends every prompt token's row in prefill, then one row per decode step ...
    rows = prompt + generated - 1
    assert ranks["0"]["bytes_sent"] == ranks["1"]["bytes_received"] == rows * row
    # ... and rank 1 sends each token it picks (one int32) back: one prefill, the decodes
    assert ranks["1"]["bytes_sent"] == ranks["0"]["bytes_received"] == generated * 4
    for r in ranks.values():
        assert r["busy_seconds"] > 0 and r["waiting_seconds"] > 0
    (hop,) = rep["hops"]
    assert (hop["from"], hop["to"], hop["messages"]) == (0, 1, generated)
    assert hop["mean_bytes"] == rows * row / generated
    assert hop["measured_seconds"] > 0 and hop["predicted_seconds"] > 0
    assert rep["decode"]["seconds_per_token"] > 0
    assert rep["decode"]["predicted_seconds_per_token"] > 0
    assert rep["prediction_basis"] and rep["batch"] == 1


def check_trace_tracks(trace: dict, ranks: int) -> None:
    """One named process track per rank, each with spans, every rank's clock offset
    recorded within what its measurement can tell (half the round trip: the ranks of one
    machine share one clock, so the true offset is zero)."""
    events = trace["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert sorted(names) == list(range(ranks))
    assert {e["pid"] for e in events if e["ph"] == "X"} == set(range(ranks))
    bad = [e for e in events if e["ph"] == "X" and not (e["ts"] >= 0 and e["dur"] >= 0)]
    assert bad == [], (bad[:5], trace.get("otherData"))
    offsets = trace["otherData"]["clock_offset_seconds"]
    trips = trace["otherData"]["clock_round_trip_seconds"]
    assert sorted(offsets) == [str(r) for r in range(ranks)] and offsets["0"] == 0.0
    for r in range(1, ranks):
        assert trips[str(r)] > 0 and abs(offsets[str(r)]) <= trips[str(r)] / 2 + 1e-9


def report_keys(rep: dict) -> set[str]:
    """Which figures a report gives: its keys, those of `decode`, of every rank's entry and
    of every hop (what the keys hold below that, such as the timings of the stages this
    process ran, may differ with how the ranks were started)."""
    keys = set(rep) | {f"decode/{k}" for k in rep["decode"]}
    keys |= {f"ranks/*/{k}" for r in rep["ranks"].values() for k in r}
    return keys | {f"hops/*/{k}" for h in rep["hops"] for k in h}
