"""Collectives in native code: a tensor-parallel program on local ranks runs each token as one
native call per rank (its allreduces and allgathers speak the local transport's channel
protocol from JIT-compiled code), with the bits, the byte counts and the fault behaviour of
the Python path (`CKEIR_PYTHON_COLLECTIVES=1`, collectives from Python between segments)."""

import numpy as np
import pytest
from cli_runner import ckec

import ckeir
from ckeir.ranks import run_local
from ckeir.runtime.distributed import PYTHON_COLLECTIVES_ENV
from ckeir.runtime.transport.base import Link, LinkModel

SPEC = """
model m {{
  family llama; vocab 384; hidden 128; layers 3; heads 4; kv_heads 2; ffn 256
  context 64; weights random(seed = 11)
}}
cluster c {{
  node n0 {{ cores 1; dram 8GiB; dram_bw {bw0}; l2 1MiB; l3 32MiB }}
  node n1 {{ cores 1; dram 8GiB; dram_bw 20GB/s; l2 1MiB; l3 32MiB }}
}}
schedule s {{
  run m on c
  quantize weights q8_0
  phase prefill {{ stage [n0, n1] layers 0..2 }}
  phase decode  {{ stage [n0, n1] layers 0..2 }}
}}
"""
PROMPT = [3, 14, 15, 92, 65]
N = 12


def tp_spec(tmp_path, bw0="20GB/s"):
    path = tmp_path / f"tp-{bw0.replace('/', '')}.cke"
    path.write_text(SPEC.format(bw0=bw0))
    return path


def run(path, python_collectives: bool, threads: int = 1, links=None):
    with pytest.MonkeyPatch.context() as mp:  # the ranks (forked) read it as they start
        mp.setenv(PYTHON_COLLECTIVES_ENV, "1" if python_collectives else "")
        prog = ckeir.compile(path, backend="reference", threads=threads)
        return run_local(prog, PROMPT, N, collect_logits=True, links=links)


def logits(out):
    steps = {}
    for r in out["ranks"]:
        steps.update(r["logits"])
    return [steps[i] for i in sorted(steps)]


def native_calls(rank) -> int:
    return sum(1 for e in rank["events"] if e[0] == "native")


@pytest.fixture(scope="module")
def both_paths(tmp_path_factory):
    """The same run with native and with Python collectives, per (node bandwidth, threads)."""
    cache = {}

    def get(bw0="20GB/s", threads=1):
        if (bw0, threads) not in cache:
            path = tp_spec(tmp_path_factory.mktemp("tp"), bw0)
            cache[(bw0, threads)] = tuple(run(path, python, threads) for python in (False, True))
        return cache[(bw0, threads)]

    return get


def test_one_native_call_per_token(both_paths):
    """Each rank makes one native call per engine step (the prefill, then each decode
    token), where the Python path makes one per segment between collectives."""
    native, python = both_paths()
    steps = 1 + (N - 1)  # one prefill call (the prompt fits a chunk), then N - 1 decodes
    for rank in native["ranks"]:
        assert native_calls(rank) == steps
    for rank in python["ranks"]:
        assert native_calls(rank) > 3 * steps  # a segment per layer half, and more


@pytest.mark.parametrize(("bw0", "threads"), [("20GB/s", 1), ("40GB/s", 1), ("20GB/s", 2)])
def test_native_collectives_give_the_python_paths_bits(both_paths, bw0, threads):
    """The same tokens and bitwise the same logits as collectives run from Python (sums in
    rank order), with equal shards, with uneven ones (an allgather of unequal slices, sent
    padded), and with two threads per rank sharing each sum."""
    native, python = both_paths(bw0, threads)
    assert native["tokens"] == python["tokens"]
    got, want = logits(native), logits(python)
    assert len(got) == N
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)


def test_transport_counts_what_the_ir_states(both_paths):
    """The transport's counters after a native run are those of the Python path: per
    operation (calls, payload bytes) and per peer (bytes and messages each way) — they come
    from what the native code recorded and were held to the IR's byte counts."""
    native, python = both_paths()
    for a, b in zip(native["ranks"], python["ranks"], strict=True):
        for kind in ("allreduce", "allgather", "broadcast"):
            ours, theirs = a["transport"]["ops"][kind], b["transport"]["ops"][kind]
            assert (ours["count"], ours["bytes"]) == (theirs["count"], theirs["bytes"])
        for peer, ours in a["transport"]["peers"].items():
            theirs = b["transport"]["peers"][peer]
            for key in ("bytes_sent", "bytes_received", "messages_sent", "messages_received"):
                assert ours[key] == theirs[key], key
        assert a["waiting_seconds"] > 0 and a["busy_seconds"] > 0
    # 2 allreduces per layer per step: the attention output's holds two chunk sums of one
    # 128-float row per token (rank 1's two query heads, k_chunk = head_dim), the FFN's one
    ops = native["ranks"][0]["transport"]["ops"]
    assert ops["allreduce"]["count"] == 2 * 3 * N
    assert ops["allreduce"]["bytes"] == (2 + 1) * 3 * (len(PROMPT) + N - 1) * 512


def test_native_collectives_over_a_simulated_link(both_paths, tmp_path):
    """Over a simulated link (`--simulate-links`) the collectives still run in the one native
    call per token: each message is held until the link would have delivered it (latency +
    bytes / bandwidth from the collective's start), so no collective takes less than its
    link; the bits are those of the unshaped run."""
    link = Link(bandwidth=50e6, latency=300e-6)
    shaped = run(tp_spec(tmp_path), False, links=LinkModel(default=link))
    native, _ = both_paths()
    assert shaped["tokens"] == native["tokens"]
    for a, b in zip(logits(shaped), logits(native), strict=True):
        assert np.array_equal(a, b)
    for rank in shaped["ranks"]:
        assert native_calls(rank) == N
        sent = rank["transport"]["peers"][1 - rank["rank"]]
        collectives = [e for e in rank["events"] if e[0] in ("allreduce", "allgather")]
        assert len(collectives) == 7 * N  # 2 per layer and the LM head's allgather
        per_message = sent["bytes_sent"] / sent["messages_sent"]
        assert min(e[4] for e in collectives) >= link.delay(0)
        assert sum(e[4] for e in collectives) >= len(collectives) * link.delay(per_message) * 0.99


@pytest.mark.parametrize("kind", ["kill", "raise"])
def test_rank_failing_while_its_peer_waits_in_native_code(tmp_path, kind):
    """Rank 1 dies (or raises) before a decode token while rank 0 is inside its native call,
    waiting in the first allreduce: the run ends naming rank 1 — no hang (the time-out is a
    backstop) — and rank 0 says it left a native collective."""
    env = {"CKEIR_FAULT": f"rank=1,step=3,kind={kind}"}
    r = ckec("run", tp_spec(tmp_path), "--ids", "1,2,3", "-n", "20", timeout=120, env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert f"error: rank 1 {'was killed by SIGKILL' if kind == 'kill' else 'failed'}" in r.stderr
    assert "allreduce over ranks (0, 1) (native) abandoned" in r.stderr, r.stderr


def test_stopped_rank_is_ended_by_the_watchdog_while_its_peer_waits_natively(tmp_path):
    """Rank 1 stops (SIGSTOP) mid-decode: rank 0 sleeps in a native allreduce until the
    watchdog kills rank 1 and fails the world, then ends with the others."""
    env = {"CKEIR_FAULT": "rank=1,step=3,kind=stop", "CKEIR_WATCHDOG_SECONDS": "2"}
    r = ckec("run", tp_spec(tmp_path), "--ids", "1,2,3", "-n", "20", timeout=120, env=env)
    assert r.returncode == 1, r.stderr
    assert "rank 1 made no progress for 2 s (it is stopped" in r.stderr, r.stderr
    assert "(native) abandoned" in r.stderr, r.stderr


def _rank_without_collective_events(transport, path):
    """A rank run as `run_local` runs one, its engine asked for no per-collective events."""
    from ckeir.api import Program

    prog = Program(path, transport=transport, threads=1)
    try:
        prog.engine.trace_collectives = False
        tokens = prog.generate(PROMPT, N)
        return tokens, transport.stats.as_dict(), list(prog.engine.events)
    finally:
        prog.close()


def test_a_run_without_a_trace_counts_its_collectives_in_bulk(both_paths, tmp_path):
    """Without a trace asking for them, a fused call's collectives are checked and counted
    per kind at once (`Transport.count_collectives`) and leave no event each: the counters
    are the Python path's, the events the native calls alone."""
    from ckeir.runtime.transport.local import launch_local

    _, python = both_paths()
    got = launch_local(2, _rank_without_collective_events, args=(tp_spec(tmp_path),))
    for (tokens, stats, events), theirs in zip(got, python["ranks"], strict=True):
        assert tokens == python["tokens"]
        for kind in ("allreduce", "allgather"):
            ours, want = stats["ops"][kind], theirs["transport"]["ops"][kind]
            assert (ours["count"], ours["bytes"]) == (want["count"], want["bytes"])
            assert ours["seconds"] > 0
        for peer, ours in stats["peers"].items():
            want = theirs["transport"]["peers"][peer]
            for key in ("bytes_sent", "bytes_received", "messages_sent", "messages_received"):
                assert ours[key] == want[key], key
        assert {e[0] for e in events} == {"native"} and len(events) == N
