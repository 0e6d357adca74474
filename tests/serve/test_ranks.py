"""`ckec serve` on a batched pipeline of two local ranks (specs/smollm2-pipeline-batch4.cke):
rank 0 serves HTTP and schedules, rank 1 runs its stage of every step.  The greedy text is
one rank's `generate`, concurrent sampled streams each give what they give alone, and a
SIGTERM to the launcher stops every rank cleanly; under mpiexec too."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from needs import needs_mpi
from server import Server, streamed_together
from smollm2 import SPEC, needs_smollm2

import ckeir

pytestmark = [needs_smollm2, pytest.mark.slow]
PIPELINE = Path(SPEC).with_name("smollm2-pipeline-batch4.cke")
PROMPTS = ["Once upon a time", "The capital of France is", "def add(a, b):", "Roses are"]


@pytest.fixture(scope="module")
def server():
    s = Server(PIPELINE).wait_ready()
    yield s
    s.stop()


def test_greedy_text_is_one_rank_generate(server):
    with ckeir.compile(SPEC) as prog, server.client() as client:
        tk = prog.tokenizer
        for prompt in PROMPTS[:2]:
            r = client.completions.create(
                model="smollm2", prompt=prompt, max_tokens=16, temperature=0
            )
            assert r.choices[0].text == tk.decode(prog.generate(tk.encode(prompt), 16))


def test_concurrent_sampled_streams_each_as_alone(server):
    options = dict(max_tokens=20, temperature=0.9, seed=11)
    with server.client() as client:
        alone = [
            client.completions.create(model="smollm2", prompt=p, **options).choices[0].text
            for p in PROMPTS
        ]
        together = streamed_together(client, PROMPTS, **options)
    assert together == alone
    for _ in range(3000):  # a finished sequence's slot is freed by the scheduler's next step
        m = server.metrics()
        if m["ckeir_busy_slots"] == 0:
            break
        time.sleep(0.02)
    assert m["ckeir_slots"] == 4 and m["ckeir_busy_slots"] == 0


def test_sigterm_stops_every_rank(server):
    pids = _children(server.proc.pid)
    assert len(pids) == 2  # the two ranks, under the launcher
    assert server.stop() == 0, server.output()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


@needs_mpi
def test_mpi_ranks_serve_and_stop():
    server = Server(PIPELINE, mpi=2).wait_ready()
    try:
        with ckeir.compile(SPEC) as prog, server.client() as client:
            tk = prog.tokenizer
            r = client.completions.create(
                model="smollm2", prompt=PROMPTS[1], max_tokens=12, temperature=0
            )
            assert r.choices[0].text == tk.decode(prog.generate(tk.encode(PROMPTS[1]), 12))
    finally:
        code = server.stop()  # SIGTERM to mpiexec, which passes it to the ranks
    assert code == 0, server.output()


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out
