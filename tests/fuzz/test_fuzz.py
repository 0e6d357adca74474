"""A short fuzzing run in CI, and the harness's own checks.

The short run feeds a few hundred hostile specs, IR texts and damaged model files through ckec
(tests/fuzz/mutators.py) and asserts that every one ends cleanly: a result or a located
CkeError, never an internal error, a hang or a crash; nonsense is refused and what the
repository ships is taken.  The long run is
`python -m tests.fuzz.run_fuzz` (see its docstring).  The harness tests below show that each
verdict is really observed, so a clean short run means something.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .harness import Case, Pool
from .mutators import (
    FILE_ACTIONS,
    FILE_SPEC,
    REPO,
    Environment,
    cases,
    file_case,
    ir_case,
    ir_seeds,
    spec_case,
    spec_seeds,
)
from .run_fuzz import load_case, save_case, signatures
from .shrink import shrink
from .strategies import gguf_files

pytestmark = pytest.mark.slow

SHORT_RUN = {"spec": 120, "ir": 100, "file": 60}
CASE_TIMEOUT = 20.0  # seconds: a hang, not a speed limit (a clean case takes well under 1 s)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    with Pool(tmp_path_factory.mktemp("fuzz"), Environment(), workers=1) as p:
        yield p


def run_cases(pool, todo):
    return [o for _, o in sorted(pool.run(todo), key=lambda io: io[0])]


def failures(outcomes):
    """The cases that did not end cleanly (out-of-memory aside: the limit is the test's, not
    a bound ckec promises), one line each, grouped by signature."""
    bad = [o for o in outcomes if o.verdict not in ("clean", "oom")]
    lines = []
    for key, group in signatures(bad).items():
        lines.append(f"{len(group)} x {key}: e.g. {group[0].summary()[:300]}")
    return lines


@pytest.mark.parametrize("kind", sorted(SHORT_RUN))
def test_short_run_ends_every_case_cleanly(pool, kind):
    todo = [_bounded(c) for c in cases(kind, SHORT_RUN[kind], seed=0)]
    outcomes = run_cases(pool, todo)
    assert len(outcomes) == len(todo)
    assert failures(outcomes) == []


def _bounded(case: Case) -> Case:
    """At least CASE_TIMEOUT for the case (native runs keep their longer one)."""
    import attrs

    return attrs.evolve(case, timeout=max(case.timeout, CASE_TIMEOUT))


# ---- hypothesis drives the same mutators: a failure shrinks to the fewest, plainest choices ----

FEW = settings(
    max_examples=10,
    deadline=None,
    derandomize=True,  # CI sees the same examples every time; the long run explores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FEW
@given(rng=st.randoms(use_true_random=False))
def test_hypothesis_specs(pool, rng):
    assert failures(run_cases(pool, [_bounded(spec_case(rng, spec_seeds()))])) == []


@FEW
@given(rng=st.randoms(use_true_random=False))
def test_hypothesis_ir(pool, rng):
    assert failures(run_cases(pool, [_bounded(ir_case(rng, ir_seeds()))])) == []


@FEW
@given(rng=st.randoms(use_true_random=False))
def test_hypothesis_model_files(pool, rng):
    assert failures(run_cases(pool, [_bounded(file_case(rng))])) == []


@FEW
@given(data=gguf_files(), action=st.sampled_from(FILE_ACTIONS))
def test_hypothesis_gguf_headers(pool, data, action):
    argv = tuple(a.replace("{spec}", "{dir}/m.cke") for a in action[1])
    spec = FILE_SPEC.format(fmt="gguf", file="m.gguf", extra="").encode()
    case = Case("file", "hypothesis header", argv, {"m.gguf": data, "m.cke": spec})
    assert failures(run_cases(pool, [_bounded(case)])) == []


# ---- the harness sees each verdict ------------------------------------------------------------

SPEC = "specs/tiny.cke"


def _case(*argv, timeout=CASE_TIMEOUT, memory=None):
    kw = {"memory": memory} if memory else {}
    return Case("spec", "harness check", tuple(argv), {}, timeout=timeout, **kw)


def _with_patched_cli(monkeypatch, tmp_path, fn, case):
    """Run `case` in a fresh pool whose workers see `ckeir.cli.cmd_plan` replaced by `fn`
    (workers are forked after the patch)."""
    from ckeir import cli

    monkeypatch.setattr(cli, "cmd_plan", fn)
    with Pool(tmp_path, Environment(), workers=1) as p:
        [outcome] = run_cases(p, [case])
    return outcome


def test_a_hang_is_killed_at_the_timeout_and_the_pool_goes_on(monkeypatch, tmp_path):
    from ckeir import cli

    monkeypatch.setattr(cli, "cmd_plan", lambda argv: time.sleep(600))
    with Pool(tmp_path, Environment(), workers=1) as p:
        outcomes = run_cases(p, [_case("plan", "x", timeout=2.0), _case("--help-me")])
    # "hang" is only ever the pool's verdict on a worker it killed (the sleep, left alone,
    # would return and be judged by its exit); no wall-clock bound, so load cannot fail it
    assert [o.verdict for o in outcomes] == ["hang", "clean"]
    assert outcomes[0].seconds == 2.0


def test_a_worker_killed_by_a_signal_is_a_crash(monkeypatch, tmp_path):
    def segfault(argv):
        os.kill(os.getpid(), signal.SIGSEGV)

    outcome = _with_patched_cli(monkeypatch, tmp_path, segfault, _case("plan", "x"))
    assert (outcome.verdict, outcome.error) == ("crash", "SIGSEGV")
    assert outcome.signature == "SIGSEGV at tests/fuzz/test_fuzz.py:segfault"


def test_an_exception_the_cli_does_not_expect_is_an_internal_error(monkeypatch, tmp_path):
    def broken(argv):
        return {}["missing"]

    outcome = _with_patched_cli(monkeypatch, tmp_path, broken, _case("plan", "x"))
    assert outcome.verdict == "internal"
    assert outcome.error.startswith("KeyError")
    assert outcome.frame.endswith("in broken")
    assert outcome.signature == "KeyError at tests/fuzz/test_fuzz.py:broken"


def test_memory_past_the_limit_is_oom(monkeypatch, tmp_path):
    def greedy(argv):
        return len(bytearray(2 << 30))

    case = _case("plan", "x", memory=256 << 20)
    outcome = _with_patched_cli(monkeypatch, tmp_path, greedy, case)
    assert outcome.verdict == "oom"


def test_a_result_and_a_located_refusal_are_clean_and_a_saved_case_replays(pool, tmp_path):
    good = (REPO / SPEC).read_bytes()
    bad = good.replace(b"hidden     128", b"hidden     12x")
    argv = ("{dir}/case.cke", "--emit=mlir")
    ok, refused = run_cases(
        pool,
        [
            Case("spec", "tiny", argv, {"case.cke": good}, timeout=CASE_TIMEOUT),
            Case("spec", "tiny, broken", argv, {"case.cke": bad}, timeout=CASE_TIMEOUT),
        ],
    )
    assert (ok.verdict, ok.rc, ok.message) == ("clean", 0, "")
    assert (refused.verdict, refused.rc) == ("clean", 1)
    assert "case.cke:5:" in refused.message
    saved = save_case(tmp_path, 7, refused)
    again = run_cases(pool, [load_case(saved / "case.json")])[0]
    assert (again.verdict, again.rc) == ("clean", 1)
    assert again.message.split("case.cke", 1)[1] == refused.message.split("case.cke", 1)[1]


def test_a_failing_case_shrinks_to_the_line_that_fails(monkeypatch, tmp_path):
    def fails_on_boom(argv):
        text = open(argv[0]).read()
        if "BOOM" in text:
            raise KeyError("boom")
        return 0

    from ckeir import cli

    monkeypatch.setattr(cli, "cmd_compile", fails_on_boom)
    text = "".join(f"line {i}\n" for i in range(40)).replace("line 17", "BOOM 17")
    case = Case("spec", "boom", ("{dir}/case.cke",), {"case.cke": text.encode()})
    with Pool(tmp_path, Environment(), workers=1) as p:
        [failed] = run_cases(p, [case])
        small = shrink(p, failed, budget=100)
    assert (
        failed.signature == small.signature == "KeyError at tests/fuzz/test_fuzz.py:fails_on_boom"
    )
    assert small.case.files["case.cke"] == b"BOOM 17\n"


def test_nonsense_accepted_is_its_own_verdict(monkeypatch, tmp_path):
    """A case that must be refused but succeeds, and a pass run twice whose output differs
    from running it once, are `accepted` (nonsense accepted), not clean."""

    def echo_pipeline(argv):
        print(argv[-1])  # "p,p" prints something else than "p"
        return 0

    from ckeir import cli

    monkeypatch.setattr(cli, "cmd_opt", echo_pipeline)
    refuse = Case("spec", "must refuse", ("opt", "x", "p"), refuse="kv_heads 0")
    twice = Case(
        "ir", "twice", ("opt", "x", "p,p"), same_as=("opt", "x", "p"), same_as_why="p twice"
    )
    same = Case("ir", "same", ("opt", "x", "p"), same_as=("opt", "x", "p"), same_as_why="p")
    with Pool(tmp_path, Environment(), workers=1) as p:
        outcomes = run_cases(p, [refuse, twice, same])
    assert [(o.verdict, o.signature) for o in outcomes] == [
        ("accepted", "accepted: kv_heads 0"),
        ("accepted", "accepted: p twice"),
        ("clean", "clean"),
    ]


def test_a_local_rank_failing_mid_run_is_an_internal_error(monkeypatch, tmp_path):
    """ckec checks inputs before ranks start: a rank that fails later is a bug, even though
    the launcher reports it as a CkeError (exit 1)."""
    import sys

    def rank_fails(argv):
        print("error: rank 1 failed: rank 1 is not a member of group (2,)", file=sys.stderr)
        return 1

    outcome = _with_patched_cli(monkeypatch, tmp_path, rank_fails, _case("plan", "x"))
    assert outcome.verdict == "internal"
    assert outcome.signature == "rank failed"
