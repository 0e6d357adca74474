"""The width of a pool's runs (`width.WidthPolicy`): the policy on synthetic timings (quiet
machine: it stays wide and its probes are rare; load comes: it narrows within a few tokens;
load goes: it widens again), and an engine that follows it — each token run at the width
the policy chose (counted by the engine and by the jobs its pool published), the same ids at
every width."""

from __future__ import annotations

import numpy as np
import pytest
from widths import TWO_CORES_SPEC, Forced

import ckeir
from ckeir.backends.llvm import width as W
from ckeir.backends.llvm.width import WidthPolicy, adaptive_wanted, candidate_widths

QUIET = {2: 4e-3, 1: 6e-3}  # seconds per decode token at each width
LOADED = {2: 9e-3, 1: 6e-3}


def drive(policy: WidthPolicy, seconds, tokens: int, phase="decode") -> list[int]:
    """`tokens` runs of `phase`, each taking `seconds(i, width)`: the widths chosen."""
    chosen = []
    for i in range(tokens):
        w = policy.choose(phase)
        policy.observe(phase, w, seconds(i, w))
        chosen.append(w)
    return chosen


def noisy(table, seed=0):
    rng = np.random.default_rng(seed)
    return lambda i, w: table[w] * rng.uniform(0.95, 1.1)


def test_candidate_widths_halve_down_to_one():
    assert candidate_widths(1) == (1,)
    assert candidate_widths(2) == (2, 1)
    assert candidate_widths(3) == (3, 1)
    assert candidate_widths(8) == (8, 4, 2, 1)


def test_on_a_quiet_machine_it_stays_wide_and_probes_rarely():
    p = WidthPolicy(2)
    chosen = drive(p, noisy(QUIET), 2000)
    narrow = chosen.count(1)
    assert chosen[0] == 2 and p.phase("decode").switches == 0
    # probe tokens cost (6 - 4) / 4 = 50% each: < 1% of the time in all
    assert narrow * 0.5 / len(chosen) < 0.01
    assert p.figures()["decode"]["tokens"] == {2: 2000 - narrow, 1: narrow}


def test_load_narrows_it_within_a_few_tokens_and_its_end_widens_it_again():
    p = WidthPolicy(2)
    quiet, loaded = noisy(QUIET, 1), noisy(LOADED, 2)

    def seconds(i, w):
        return loaded(i, w) if 300 <= i < 900 else quiet(i, w)

    chosen = drive(p, seconds, 1500)
    assert chosen[300:305].count(1) >= 2  # narrowed within a few tokens of the load
    assert chosen[305:900].count(2) < 0.05 * 595  # and stays narrow, but for probes
    back = next(i for i in range(900, 1500) if chosen[i : i + 20] == [2] * 20)
    assert back - 900 <= W.DECODE.max_interval + W.DECODE.probe_runs + 2
    assert p.phase("decode").switches >= 2


def test_a_fixed_policy_never_narrows_and_never_probes():
    p = WidthPolicy.fixed(2)
    assert set(drive(p, noisy(LOADED), 500)) == {2}
    assert p.figures()["decode"] | {"seconds_per_token": None} == {
        "adaptive": False,
        "threads": 2,
        "width": 2,
        "tokens": {2: 500},
        "runs": {2: 500},
        "switches": 0,
        "probes": 0,
        "seconds_per_token": None,
    }
    assert not WidthPolicy(1).adaptive and WidthPolicy(1).choose("decode") == 1


def test_prefill_keeps_an_estimate_of_its_own():
    p = WidthPolicy(2)
    drive(p, noisy(LOADED), 100)  # decode narrowed ...
    assert p.choose("decode") == 1
    assert p.choose("prefill") == 2  # ... prefill has measured nothing yet
    drive(p, lambda i, w: {2: 1e-3, 1: 2e-3}[w], 40, "prefill")
    assert p.choose("prefill") == 2 and p.phase("prefill").probes >= 2


def test_a_switch_in_one_phase_makes_the_others_look_around():
    """Prefill runs rarely (a call per request): when decode finds the load changed, the
    next prefill call probes instead of waiting out its interval."""
    p = WidthPolicy(2)
    drive(p, lambda i, w: {2: 1e-3, 1: 2e-3}[w], 3, "prefill")  # wide is best, no probe due
    drive(p, noisy(QUIET), 40)
    drive(p, noisy(LOADED), 10)  # decode switches to 1 thread
    assert p.phase("decode").switches >= 1
    assert p.choose("prefill") == 1 and p.phase("prefill").probes == 1


def test_the_environment_and_the_caller_choose(monkeypatch):
    monkeypatch.delenv(W.ENV_SWITCH, raising=False)
    assert adaptive_wanted() and WidthPolicy.for_pool(2).adaptive
    monkeypatch.setenv(W.ENV_SWITCH, "0")
    assert not adaptive_wanted() and not WidthPolicy.for_pool(2).adaptive
    assert WidthPolicy.for_pool(2, adaptive=True).adaptive
    monkeypatch.setenv(W.ENV_SWITCH, "1")
    assert not WidthPolicy.for_pool(2, adaptive=False).adaptive


# ---- an engine that follows the policy ------------------------------------------------------

PROMPT, N = [5, 17, 33, 2, 91], 40


@pytest.fixture(scope="module")
def prog(tmp_path_factory):
    path = tmp_path_factory.mktemp("width") / "m.cke"
    path.write_text(TWO_CORES_SPEC)
    with ckeir.compile(path, threads=2) as p:
        yield p


class Modeled(WidthPolicy):
    """The real policy, observing each run's measured time plus what a machine where the
    model is large adds: quiet, one thread is `extra` seconds a token slower than two;
    `loaded` (one busy process beside the pool), two threads are, since each op waits for
    the part a preempted worker holds.  (This tiny model alone runs faster on one thread
    than on two whatever the load: its ops are too small to share.)"""

    extra = 20e-3
    loaded = False

    def observe(self, phase, width, seconds, tokens=1):
        slow = width > 1 if self.loaded else width == 1
        super().observe(phase, width, seconds + (self.extra if slow else 0.0), tokens)


def generate(prog, policy, n=N):
    engine = prog.engine
    engine.widths = policy
    logits = []
    ids = list(prog.stream(PROMPT, n, on_logits=lambda i, x: logits.append(x.copy())))
    return ids, logits


def test_ids_and_logits_are_the_same_bits_at_every_width(prog):
    """Every token at 2 threads, every token at 1, and widths alternating token by token
    (the KV cache written at one width, read at the other): the same ids and logits."""
    wide = generate(prog, WidthPolicy.fixed(2))
    for order in ([1], [1, 2], [2, 2, 1]):
        ids, logits = generate(prog, Forced(order))
        assert ids == wide[0], order
        assert all(np.array_equal(a, b) for a, b in zip(logits, wide[1], strict=True)), order


def test_a_token_at_width_1_publishes_no_job(prog):
    pool = prog.engine.pool
    jobs = pool.jobs()
    policy = Forced([1])
    generate(prog, policy, 10)
    assert pool.jobs() == jobs
    assert policy.figures()["decode"]["tokens"] == {1: 9}
    policy = Forced([2])
    generate(prog, policy, 10)
    assert pool.jobs() - jobs == 10  # one prefill call, nine decode tokens


def test_the_engine_narrows_under_load_and_widens_after_it(prog, monkeypatch):
    """Decode in one long sequence on a `Modeled` machine: quiet, loaded, then quiet again.
    The engine moves to 1 thread within a few tokens of the load and back to 2 after it, as
    its own counts and its pool's published jobs show, with the ids of a fixed run."""
    monkeypatch.setattr(W, "DECODE", W.Cadence(probe_runs=2, min_interval=4, max_interval=16))
    monkeypatch.setitem(W.CADENCES, "decode", W.DECODE)
    policy = Modeled(2)
    engine = prog.engine
    engine.widths = policy
    widths: list[int] = []
    jobs: list[int] = []

    def step(i, x):  # after each token: what the engine ran it at, and the jobs so far
        d = policy.phase("decode")
        widths.append(d.last)
        jobs.append(engine.pool.jobs())
        policy.loaded = 30 <= len(widths) < 70

    ids = list(prog.stream(PROMPT, 110, on_logits=step))
    decode = widths[1:]  # the first token comes out of prefill
    assert decode[:28].count(2) >= 20  # quiet: wide, but for probes
    # loaded from token 29: narrow within a few tokens, but for probes (2 tokens in 16 here)
    assert decode[33:69].count(1) >= 28
    assert decode[85:].count(2) >= 20  # quiet again: wide
    figures = policy.figures()["decode"]
    assert figures["switches"] >= 2 and figures["tokens"][1] >= 30
    # a narrow token published no job to the workers, a wide one did
    steps = np.diff(jobs)
    assert all(s == (w > 1) for s, w in zip(steps, widths[1:], strict=True))
    fixed = generate(prog, WidthPolicy.fixed(2), 110)[0]
    assert ids == fixed
