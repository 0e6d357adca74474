"""The evidence a run and a plan leave behind: the run report's numbers, a trace that follows
the Chrome Trace Event format, and the planner's view of a hybrid schedule."""

import json
from pathlib import Path

from cli_runner import ckec
from run_evidence import check_pipeline_report, check_trace_tracks, pipeline_spec

ROOT = Path(__file__).resolve().parents[2]


def test_run_report_and_trace(tmp_path):
    report, trace = tmp_path / "r.json", tmp_path / "t.json"
    r = ckec(
        "run",
        ROOT / "specs/odd.cke",
        "--ids",
        "1,2,3",
        "-n",
        "8",
        "--report",
        report,
        "--trace",
        trace,
    )
    assert r.returncode == 0, r.stderr
    assert "CKU" in r.stderr and "outside kernels" in r.stderr
    rep = json.loads(report.read_text())
    assert rep["prompt_tokens"] == 3 and rep["generated_tokens"] == 8
    d = rep["decode"]
    assert 0 < d["native_seconds"] <= d["seconds"]
    assert d["predicted_seconds_per_token"] > 0 and rep["prediction_basis"]
    # one rank: one entry, no peers, nothing sent; its busy time is the native time
    (only,) = rep["ranks"].values()
    assert only["bytes_sent"] == only["bytes_received"] == 0 and rep["hops"] == []
    assert only["busy_seconds"] == d["native_seconds"] + rep["prefill"]["native_seconds"]
    assert rep["batch"] == rep["slots"] == 1  # one sequence per step, in the one slot
    events = json.loads(trace.read_text())["traceEvents"]
    meta = [e for e in events if e["ph"] == "M"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["name"] for e in meta} == {"process_name", "thread_name", "process_labels"}
    # the track says where the rank's thread ran, as the report's linux figures do
    (label,) = [e["args"]["labels"] for e in meta if e["name"] == "process_labels"]
    cpu = rep["linux"]["affinity"]["0"]["0"]["cpu"]
    assert label == f"unpinned: thread 0 on CPU {cpu}"
    assert len(spans) == 1 + 7  # one prefill, seven decode steps
    for e in spans:
        assert {"name", "ph", "ts", "dur", "pid", "tid"} <= set(e)
        assert e["ts"] >= 0 and e["dur"] > 0
    assert [e["name"] for e in spans] == ["prefill"] + ["decode"] * 7
    assert all(b["ts"] >= a["ts"] + a["dur"] for a, b in zip(spans, spans[1:], strict=False))
    # the trace's native spans and the report's native time are the same measurement
    decode_us = sum(e["dur"] for e in spans if e["name"] == "decode")
    assert abs(decode_us * 1e-6 - d["native_seconds"]) < 1e-6


def test_local_ranks_report_what_moved(tmp_path):
    """Two local ranks of a pipeline: each rank's bytes are what the IR says a row weighs
    times the rows that crossed, the hop counts every message, and the trace has a track per
    rank on one clock."""
    spec = pipeline_spec(tmp_path)
    report, trace = tmp_path / "r.json", tmp_path / "t.json"
    r = ckec("run", spec, "--ids", "1,2,3", "-n", "8", "--report", report, "--trace", trace)
    assert r.returncode == 0, r.stderr
    rep = json.loads(report.read_text())
    check_pipeline_report(rep, spec, prompt=3, generated=8)
    assert rep["launch"] == "2 ranks over local"
    check_trace_tracks(json.loads(trace.read_text()), ranks=2)


def test_plan_of_a_hybrid_schedule(tmp_path):
    out = tmp_path / "plan.json"
    r = ckec("plan", ROOT / "specs/hybrid.cke", "--json", out)
    assert r.returncode == 0, r.stderr
    plan = json.loads(out.read_text())
    assert plan["ranks"] == {"0": "n0", "1": "n1", "2": "n2"}
    dec = plan["phases"]["decode"]
    assert [s["nodes"] for s in dec["stages"]] == [["n0", "n1"], ["n2"]]
    assert dec["stages"][0]["kv_heads"] == [[0, 1], [1, 2]]
    ops = {t["op"] for t in dec["transfers"]}
    assert ops == {"dist.allreduce", "dist.send", "dist.recv"}
    sends = [t for t in dec["transfers"] if t["op"] == "dist.send"]
    recvs = [t for t in dec["transfers"] if t["op"] == "dist.recv"]
    # hybrid.cke sends activations as Q8_0: 64 floats = 2 blocks of 34 bytes
    assert [t["bytes"] for t in sends] == [t["bytes"] for t in recvs] == [68]
    assert dec["transfer_bytes_saved"] == 64 * 4 - 68
    pre = plan["phases"]["prefill"]
    assert pre["auto"] and pre["candidates"] and "lowest predicted latency" in pre["why"]
    best = min(c["predicted_seconds"] for c in pre["candidates"] if c["fits"])
    assert abs(pre["predicted_seconds"] - best) < 1e-12
    assert all(m["fits"] for m in plan["memory"].values())
    arena = plan["arenas"]["2"]["decode"]  # rank 2 runs the last stage
    ends = sorted((b["offset"], b["offset"] + b["bytes"]) for b in arena["buffers"])
    assert arena["buffers"] and max(e for _, e in ends) <= arena["bytes"]


def test_placement_that_does_not_fit_is_refused(tmp_path):
    spec = tmp_path / "small.cke"
    spec.write_text((ROOT / "specs/tiny.cke").read_text().replace("dram 24GiB", "dram 100KiB"))
    r = ckec(spec, "-o", tmp_path / "out.mlir")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "node n0 (rank 0) needs" in r.stderr and "but has 100.0 KiB" in r.stderr
    assert not (tmp_path / "out.mlir").exists()


def test_plan_for_this_machine(tmp_path):
    """`ckec plan` predicts for the declared cluster; `--for-this-machine` for this machine
    as a run would use it (its measured figures stated in the plan), and with
    `--simulate-links` the hops take the spec's links (a slow one here: 20 ms a message,
    far above what shared memory costs even on a busy machine)."""
    text = (ROOT / "specs" / "tiny.cke").read_text()
    slow = text.replace("bw 10Gbit/s; latency 50us", "bw 1MB/s; latency 20ms")
    assert slow != text
    spec = tmp_path / "slow-link.cke"
    spec.write_text(slow)
    plans = {}
    for name, flags in {
        "declared": (),
        "here": ("--for-this-machine",),
        "linked": ("--for-this-machine", "--simulate-links"),
    }.items():
        out = tmp_path / f"{name}.json"
        r = ckec("plan", spec, "--json", out, *flags)
        assert r.returncode == 0, r.stderr
        plans[name] = json.loads(out.read_text())
    assert plans["declared"]["predicted_for"] == "declared cluster"
    here, linked = plans["here"]["predicted_for"], plans["linked"]["predicted_for"]
    assert here["links"].startswith("none") and linked["links"] == "simulated"
    assert here["threads_per_rank"] >= 1 and here["cpu"]
    decode = {k: p["phases"]["decode"]["predicted_seconds"] for k, p in plans.items()}
    assert decode["here"] > 0 and decode["linked"] >= 0.02 > decode["here"]
    r = ckec("plan", spec, "--simulate-links")
    assert r.returncode == 1 and "--simulate-links: only with --for-this-machine" in r.stderr


def test_a_run_of_a_batched_schedule_states_its_slots(tmp_path):
    """`ckec run` on a `batch 3` schedule decodes its prompt as one sequence (batch 1) in
    one of 3 slots, with the ids of the same schedule at batch 1."""
    from widths import TWO_CORES_SPEC

    outs = {}
    for batch in (1, 3):
        spec = tmp_path / f"b{batch}.cke"
        spec.write_text(TWO_CORES_SPEC.replace("q8_0 }", f"q8_0; batch {batch} }}"))
        report = tmp_path / f"b{batch}.json"
        r = ckec("run", spec, "--ids", "1,2,3", "-n", "6", "--report", report, "--no-predict")
        assert r.returncode == 0, r.stderr
        rep = json.loads(report.read_text())
        assert (rep["batch"], rep["slots"]) == (1, batch)
        outs[batch] = r.stdout
    assert outs[1] == outs[3] and outs[1].strip()
