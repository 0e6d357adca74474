"""Distributed runs on local ranks (one process each) against the single-rank run of the same
model: pipeline parallelism changes no arithmetic (bitwise-equal logits), tensor parallelism
re-associates sums (logits within 1e-4 of their scale), and every placement gives the same
greedy tokens — including prefill tensor parallel with decode pipelined, which moves the KV
cache between the two placements after prefill."""

import sys
from pathlib import Path

import numpy as np
import pytest
from cli_runner import ckec, start_ckec

import ckeir
from ckeir.ranks import run_local

sys.path.insert(0, str(Path(__file__).parent / "transport"))
from reaping import adopting  # noqa: E402

MODEL = """
model m {{
  family llama; vocab 384; hidden 128; layers 4; heads 4; kv_heads {kv}; ffn 256
  context 64; weights random(seed = 5); tie_embeddings {tied}
}}
"""
CLUSTER = """
cluster c {{
  node n0 {{ cores 1; dram 8GiB; dram_bw {bw0}; l2 1MiB; l3 32MiB }}
  node n1 {{ cores 1; dram 8GiB; dram_bw 20GB/s; l2 1MiB; l3 32MiB }}
  node n2 {{ cores 1; dram 8GiB; dram_bw 20GB/s; l2 1MiB; l3 32MiB }}
  link n0 <-> n1 {{ bw 10Gbit/s; latency 20us }}
}}
"""
PROMPT = [3, 14, 15, 92, 65, 35]
N = 32


def spec(tmp_path, name, phases, kv=2, tied="false", bw0="20GB/s", extra=""):
    path = tmp_path / f"{name}.cke"
    path.write_text(
        MODEL.format(kv=kv, tied=tied)
        + CLUSTER.format(bw0=bw0)
        + f"""
schedule s {{
  run m on c
  quantize weights f32
  {extra}
  {phases}
}}
"""
    )
    return path


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Tokens and per-step logits of the one-node run, per model variant."""
    cache = {}

    def get(kv=2, tied="false"):
        if (kv, tied) not in cache:
            d = tmp_path_factory.mktemp("single")
            p = ckeir.compile(spec(d, "one", "", kv=kv, tied=tied), threads=1)
            logits = []
            tokens = list(p.stream(PROMPT, N, on_logits=lambda i, x: logits.append(x.copy())))
            p.close()
            cache[(kv, tied)] = tokens, logits
        return cache[(kv, tied)]

    return get


def run(path, collect=True):
    prog = ckeir.compile(path, backend="reference")
    assert prog.world_size > 1
    return run_local(prog, PROMPT, N, collect_logits=collect)


def root_logits(result):
    """Each step's logits, from whichever rank computed them (the last stage's)."""
    steps = {}
    for r in result["ranks"]:
        steps.update(r["logits"])
    return [steps[i] for i in sorted(steps)]


def test_pipeline_is_bitwise_identical(tmp_path, single):
    path = spec(
        tmp_path,
        "pp",
        """
  phase prefill { stage n0 layers 0..1; stage n1 layers 2..3 }
  phase decode  { stage n0 layers 0..1; stage n1 layers 2..3 }""",
    )
    tokens, logits = single()
    out = run(path)
    assert out["tokens"] == tokens
    got = root_logits(out)
    assert len(got) == N
    for a, b in zip(got, logits, strict=True):
        assert np.array_equal(a, b)


def test_three_stage_uneven_pipeline(tmp_path, single):
    """Stages need not be equal; every rank agrees on the tokens."""
    path = spec(
        tmp_path,
        "pp3",
        """
  phase prefill { stage n0 layers 0..0; stage n1 layers 1..2; stage n2 layers 3..3 }
  phase decode  { stage n0 layers 0..2; stage n2 layers 3..3 }""",
    )
    out = run(path, collect=False)
    assert out["tokens"] == single()[0]
    assert all(r["tokens"] == out["tokens"] for r in out["ranks"])


@pytest.mark.parametrize("tied", ["false", "true"])
def test_tensor_parallel(tmp_path, single, tied):
    path = spec(
        tmp_path,
        "tp",
        """
  phase prefill { stage [n0, n1] layers 0..3 }
  phase decode  { stage [n0, n1] layers 0..3 }""",
        tied=tied,
    )
    tokens, logits = single(tied=tied)
    out = run(path)
    assert out["tokens"] == tokens
    for a, b in zip(root_logits(out), logits, strict=True):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


def test_prefill_tensor_parallel_decode_pipelined(tmp_path, single):
    """Three lines of a spec: the KV cache written by the tensor-parallel prefill is handed to
    the pipeline stages that own each layer for decode."""
    path = spec(
        tmp_path,
        "mixed",
        """
  phase prefill { stage [n0, n1] layers 0..3 }
  phase decode  { stage n0 layers 0..1; stage n1 layers 2..3 }""",
    )
    tokens, logits = single()
    out = run(path)
    assert out["tokens"] == tokens
    for a, b in zip(root_logits(out), logits, strict=True):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


def test_hybrid_three_ranks_with_uneven_nodes(tmp_path, single):
    """A tensor-parallel stage on unequal nodes (shards follow bandwidth) feeding a pipeline
    stage; prefill left to the planner."""
    path = spec(
        tmp_path,
        "hybrid",
        """
  phase prefill { auto }
  phase decode  { stage [n0, n1] layers 0..2; stage n2 layers 3..3 }""",
        bw0="40GB/s",
    )
    prog = ckeir.compile(path, backend="reference")
    stage = prog.placement["decode"].stages[0]
    assert stage.ffn == ((0, 128), (128, 256))  # 2:1 bandwidth, in whole 128-wide units
    out = run(path, collect=False)
    assert out["tokens"] == single()[0]


@pytest.mark.parametrize("kind", ["raise", "kill"])
def test_failing_local_rank_stops_every_rank(tmp_path, kind):
    """A rank that raises or is killed mid-decode: the run exits non-zero and says which rank
    failed — no hang (the time-out is a backstop)."""
    path = spec(
        tmp_path,
        "pp",
        """
  phase prefill { stage n0 layers 0..1; stage n1 layers 2..3 }
  phase decode  { stage n0 layers 0..1; stage n1 layers 2..3 }""",
    )
    env = {"CKEIR_FAULT": f"rank=1,step=4,kind={kind}"}
    r = ckec("run", path, "--ids", "1,2,3", "-n", "40", timeout=120, env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "rank 1" in r.stderr, r.stderr


def test_malformed_fault_injection_is_named(tmp_path):
    path = spec(
        tmp_path,
        "pp",
        """
  phase prefill { stage n0 layers 0..1; stage n1 layers 2..3 }
  phase decode  { stage n0 layers 0..1; stage n1 layers 2..3 }""",
    )
    env = {"CKEIR_FAULT": "rank=one,kind=explode"}
    r = ckec("run", path, "--ids", "1,2,3", "-n", "4", timeout=120, env=env)
    assert r.returncode == 1, r.stderr
    assert "CKEIR_FAULT='rank=one,kind=explode' is not rank=R,step=S" in r.stderr, r.stderr


@pytest.mark.parametrize("setting", ["environment", "flag"])
def test_stopped_local_rank_is_named_by_the_watchdog(tmp_path, setting):
    """A rank stopped mid-decode (SIGSTOP: it answers nothing, and only SIGKILL ends it),
    with the watchdog at 2 s ($CKEIR_WATCHDOG_SECONDS, or `--watchdog` over a longer
    environment setting): the run exits non-zero naming the rank, and leaves no process and
    no shared-memory segment behind."""
    import subprocess

    period = {"environment": "2", "flag": "600"}[setting]
    args, env = _stopped_rank_run(tmp_path, step=4, watchdog_env=period)
    args += ["--watchdog", "2"] if setting == "flag" else []
    with adopting() as adoption:
        proc = start_ckec(*args, env=env, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
            proc.wait()
        left = adoption.leftovers()
    assert proc.returncode == 1, err
    assert "rank 1 made no progress for 2 s (it is stopped" in err, err
    assert "Traceback" not in err
    assert left == []
    assert not list(Path("/dev/shm").glob(f"ckeir-{proc.pid}-*"))


def test_killing_ckec_run_ends_its_ranks(tmp_path):
    """SIGKILL `ckec run` while one of its ranks is stopped and the other waits for it (the
    watchdog off): both ranks are gone within seconds."""
    import signal
    import subprocess
    import time

    args, env = _stopped_rank_run(tmp_path, step=2, watchdog_env="0")
    with adopting() as adoption:
        proc = start_ckec(*args, env=env, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not any(state == "T" for state in _child_states(proc.pid)):
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            assert len(_child_states(proc.pid)) == 2
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            proc.kill()
            proc.wait()
        assert adoption.leftovers() == []


def _stopped_rank_run(tmp_path, step: int, watchdog_env: str) -> tuple[list, dict]:
    """The arguments of a `ckec run` of a 2-stage pipeline whose rank 1 SIGSTOPs itself at
    `step`, and the variables it runs with ($CKEIR_WATCHDOG_SECONDS = `watchdog_env`)."""
    path = spec(
        tmp_path,
        "pp",
        """
  phase prefill { stage n0 layers 0..1; stage n1 layers 2..3 }
  phase decode  { stage n0 layers 0..1; stage n1 layers 2..3 }""",
    )
    fault = f"rank=1,step={step},kind=stop"
    env = {"CKEIR_FAULT": fault, "CKEIR_WATCHDOG_SECONDS": watchdog_env}
    return ["run", path, "--ids", "1,2,3", "-n", "40"], env


def _child_states(pid: int) -> list[str]:
    """The state letters of `pid`'s children."""
    from pathlib import Path

    states = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            states.append(fields[0])
    return states


def test_q8_0_transfers_in_the_plan(tmp_path):
    """Activations crossing the pipeline as Q8_0 blocks: 34 bytes per 32 floats instead of
    128, in the IR and the plan (what crosses in a run, and the logits' exact agreement with
    the single-rank twin: test_q8_0_transfers.py)."""
    phases = """
  phase prefill { stage n0 layers 0..1; stage n1 layers 2..3 }
  phase decode  { stage n0 layers 0..1; stage n1 layers 2..3 }"""
    path = spec(tmp_path, "q8t", phases, extra="quantize transfers q8_0")
    prog = ckeir.compile(path, backend="reference")
    text = prog.mlir()
    assert 'bytes = 136 : i64, format = "q8_0"' in text  # 128 floats -> 4 blocks of 34 B
    from ckeir.reports.plan import plan_report

    dec = plan_report(prog)["phases"]["decode"]
    assert dec["transfer_bytes"] == 136 and dec["transfer_bytes_saved"] == 512 - 136


def test_cli_records_parity_hops_and_waiting(tmp_path):
    """`ckec run --check-parity --simulate-links --report`: the report holds the parity check
    against the single-rank run, each hop's measured and predicted time, and every rank's
    busy and waiting time (the bubbles)."""
    import json

    path = spec(
        tmp_path,
        "pp",
        """
  phase prefill { stage n0 layers 0..1; stage n1 layers 2..3 }
  phase decode  { stage n0 layers 0..1; stage n1 layers 2..3 }""",
    )
    report = tmp_path / "r.json"
    r = ckec("run", path, "--ids", "1,2,3", "-n", "8", "--check-parity", "--simulate-links",
             "--report", report, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "parity vs single rank: tokens identical (8), logits bitwise identical" in r.stderr
    rep = json.loads(report.read_text())
    assert rep["parity"]["tokens_identical"] and rep["parity"]["logits_bitwise_identical"]
    (hop,) = rep["hops"]
    # one prefill message of 3 rows and 7 decode messages of one 128-float row
    assert (hop["from"], hop["to"], hop["messages"]) == (0, 1, 8)
    assert hop["mean_bytes"] == (3 + 7) * 512 / 8
    assert hop["links_simulated"] and hop["predicted_seconds"] == 20e-6 + 640 / 1.25e9
    assert hop["measured_seconds"] >= hop["predicted_seconds"]  # the delay is a floor
    for rank in rep["ranks"].values():
        assert rank["busy_seconds"] > 0 and rank["waiting_seconds"] > 0
    # CKU per rank and in total: each rank's active bytes over the shared token time
    ranks = rep["ranks"].values()
    assert sum(r["active_bytes_per_token"] for r in ranks) == rep["active_bytes_per_token"]
    assert abs(sum(r["cku_bytes_per_second"] for r in ranks) - rep["cku_bytes_per_second"]) < 1
    assert "CKU" in r.stderr and "rank 0:" in r.stderr


def test_auto_phases_start_only_the_nodes_they_use(tmp_path, single):
    """Both phases `auto`: the planner may leave nodes idle (here it keeps the small model on
    one node); only nodes some phase uses become ranks, and the run gives the one-node tokens
    (idle ranks once failed every run: 'rank 0 is not a member of group (2,)')."""
    path = spec(tmp_path, "auto", "phase prefill { auto }\n  phase decode { auto }")
    prog = ckeir.compile(path, backend="reference")
    used = {n for plan in prog.placement.values() for st in plan.stages for n in st.nodes}
    assert prog.world_size == len(used) and sorted(prog.rank_nodes.values()) == sorted(used)
    tokens, _ = single()
    assert prog.generate(PROMPT, N) == tokens
