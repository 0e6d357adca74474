"""Many sequences over a batched pipeline on local ranks: rank 0 drives the steps
(`PipelineSlots` under the continuous-batching scheduler), rank 1 serves them
(`serve_steps`).  Each prompt gets what `generate` gives it alone, two micro-batches fly at
once when there are sequences for both, and each hop carries the step's rows (the IR's bytes
per row, checked by the runtime on every transfer)."""

import json
import sys
from pathlib import Path

import pytest
from needs import needs_mpi
from smollm2 import needs_smollm2

import ckeir
from ckeir.errors import TransportError
from ckeir.ranks import run_local_many, run_many
from ckeir.reports.plan import plan_report
from ckeir.reports.run import decode_active_bytes, many_report
from ckeir.runtime.transport.base import LinkModel

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "tiny-pipeline-batch4.cke"  # 2 stages, batch 4, hidden 128
HIDDEN = 128
PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9] * 12, [3, 1, 4, 1, 5, 9, 2, 6], [100, 200, 300]]
N = 12


@pytest.fixture(scope="module")
def launcher():
    return ckeir.compile(SPEC, threads=1, launcher=True)


@pytest.fixture(scope="module")
def alone():
    """What each prompt gets alone: the one-rank numpy run of the same model."""
    with ckeir.compile(SPEC, backend="reference", single_rank=True) as prog:
        return [prog.generate(p, N) for p in PROMPTS]


def test_more_prompts_than_slots_each_get_what_they_get_alone(launcher, alone):
    out = run_local_many(launcher, PROMPTS, N, depth=2)
    assert out["tokens"] == alone
    many, (r0, r1) = out["many"], out["ranks"]
    assert many["depth"] == 2 and many["most_in_flight"] == 2  # micro-batches in flight
    assert many["generated_tokens"] == len(PROMPTS) * N
    # rank 1 ran every step rank 0 started: each decode step and each prefill chunk
    chunks = many["step_tokens"] - many["decode_rows"]
    assert chunks == many["prompt_tokens"] == sum(map(len, PROMPTS))
    assert r1["many"]["steps"] == many["decode_steps"] + len(PROMPTS)
    # the hop carried each step's rows: hidden f32 per decode row and per prompt id
    messages, _, sent = r0["sends"][1]
    assert messages == r1["many"]["steps"]
    assert sent == (many["decode_rows"] + many["prompt_tokens"]) * HIDDEN * 4
    assert many["decode_rows"] > many["decode_steps"]  # rows shared steps


def test_one_sequence_has_one_step_in_flight(launcher, alone):
    out = run_local_many(launcher, PROMPTS[:1], N, depth=2)
    assert out["tokens"] == alone[:1]
    many = out["many"]
    assert many["most_in_flight"] == 1 and many["decode_rows"] == many["decode_steps"] == N - 1


def test_a_bad_prompt_fails_the_run_naming_it_and_no_rank_hangs(launcher):
    with pytest.raises(TransportError, match="prompt 1: token id 9999 is not in the model"):
        run_local_many(launcher, [[1, 2], [3, 9999]], 4, watchdog=20)


@needs_mpi
def test_under_mpiexec_the_ranks_serve_the_same_steps(launcher, alone):
    """`mpiexec -n 2 python -m mpi4py -m ckeir.ranks SPEC PROMPTS N 2`: the same ids as
    alone, steps in flight, every step served by rank 1 over MPI."""
    sys.path.insert(0, str(Path(__file__).parent / "transport"))
    from mpirun import mpiexec

    argv = ["-n", "2", sys.executable, "-m", "mpi4py", "-m", "ckeir.ranks"]
    argv += [str(SPEC), json.dumps(PROMPTS), str(N), "2"]
    run = mpiexec(argv, {"MPIEXEC_TIMEOUT": "120"}, timeout=180)
    assert run.returncode == 0, run.output
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["tokens"] == alone
    assert out["many"]["most_in_flight"] == 2
    r0, r1 = out["ranks"]
    assert r0["transport_kind"] == r1["transport_kind"] == "mpi"
    assert r1["many"]["steps"] == out["many"]["decode_steps"] + len(PROMPTS)
    assert run.leftovers == [] and run.leaked == []


@pytest.mark.slow
def test_four_sequences_share_the_waits_of_a_slow_link(launcher):
    """Busy and waiting seconds per rank (native time, time inside transport calls) from
    real runs over a simulated 2 ms link: one sequence waits for the link both ways every
    token on both ranks; four sequences in two micro-batches keep two steps travelling at
    once, so each rank waits far less per token it decodes (and the ranks' work, not the
    waits, grows with the tokens).  Waits on a shaped link are sleeps: they hold on a busy
    machine."""
    links = LinkModel.uniform(1e9, 2e-3)

    def per_token(sequences: int) -> list[tuple[float, float]]:
        prompts = [[5 + i, 6, 7] for i in range(sequences)]
        out = run_local_many(launcher, prompts, 24, links=links, depth=2)
        rows = out["many"]["decode_rows"]
        assert out["many"]["most_in_flight"] == min(sequences, 2)
        return [(r["busy_seconds"] / rows, r["waiting_seconds"] / rows) for r in out["ranks"]]

    one, four = per_token(1), per_token(4)
    for rank in (0, 1):
        assert four[rank][1] < 0.6 * one[rank][1], (one, four)


def test_the_run_report_of_many_sequences_states_the_batch_and_reads_weights_once(launcher):
    """`reports.run.many_report` from what the run did: the slots, sequences, rows a decode
    step and steps in flight; a step's bytes count each weight once for all its rows."""
    prompts = PROMPTS[:4]
    out = run_local_many(launcher, prompts, N, depth=2)
    report = many_report(launcher, out["ranks"])
    b, d = report["batch"], report["decode"]
    assert (b["slots"], b["sequences"], b["micro_batches"], b["most_in_flight"]) == (4, 4, 2, 2)
    assert 1 < b["rows_per_step"] <= 2  # two micro-batches of (at most) two rows
    assert d["rows"] <= len(prompts) * (N - 1) and d["steps"] < d["rows"]
    assert report["cku_bytes_per_second"] == pytest.approx(
        report["active_bytes_per_step"] / d["seconds_per_step"]
    )
    ctx = report["context_mean"]
    one, two = (decode_active_bytes(launcher, ctx, rows=r) for r in (1, 2))
    assert 2 * one - two == report["weight_bytes_per_step"] > 0  # weights once a step
    assert set(report["ranks"]) == {0, 1}
    assert report["ranks"][1]["steps"] == out["ranks"][1]["many"]["steps"]


def test_one_rank_runs_many_sequences_through_its_slot_engine():
    """`run_many` without a transport: the Program's batched slot engine, one process."""
    with ckeir.compile(ROOT / "tests" / "filecheck" / "Inputs" / "batch4.cke", threads=1) as prog:
        figures = run_many(prog, [[1, 2, 3], [4, 5]], 6)
        alone = [prog.generate(p, 6) for p in ([1, 2, 3], [4, 5])]
        report = many_report(prog, [figures])
    assert figures["tokens"] == alone
    assert report["batch"]["slots"] == 4 and report["batch"]["sequences"] == 2
    assert report["batch"]["rows_per_step"] == 2 and report["launch"] == "one rank"


def test_by_default_as_many_steps_fly_as_the_planner_finds_best(launcher, alone):
    """The planner compares the period of the batch as one step with that of micro-batches
    in flight (`ckec plan`'s bubbles); generate_many keeps the shorter one's steps in
    flight (here the micro-batches: the tiny model's steps grow with their rows)."""
    bubbles = plan_report(launcher)["phases"]["decode"]["bubbles"]
    out = run_local_many(launcher, PROMPTS, N)
    assert out["tokens"] == alone
    assert out["many"]["most_in_flight"] == bubbles["in_flight"] == 2
    assert bubbles["micro_batches"]["period_seconds"] < bubbles["one_batch"]["period_seconds"]


@pytest.mark.slow
@needs_smollm2
def test_smollm2_sequences_over_the_pipeline_are_what_one_rank_gives_each_alone():
    """specs/smollm2-pipeline-batch4.cke: 5 prompts through 4 slots of the 2-stage pipeline,
    as one step of the batch and as two micro-batches in flight, bit for bit the ids that
    one rank's `generate` gives each prompt (int8 activations are quantized per row)."""
    prompts = [[t + i for t in (6403, 1980, 253, 655)] for i in range(5)]
    with ckeir.compile(ROOT / "specs" / "smollm2-135m.cke", threads=1) as one:
        alone = [one.generate(p, 16) for p in prompts]
    prog = ckeir.compile(ROOT / "specs" / "smollm2-pipeline-batch4.cke", launcher=True)
    for depth in (1, 2):
        out = run_local_many(prog, prompts, 16, depth=depth)
        assert out["tokens"] == alone
        assert out["many"]["most_in_flight"] == depth
