"""The run report's `prefill.widths` / `decode.widths` (how many tokens ran at each width of a
rank's pool, and the policy's switches), the summary line that says when a run narrowed, and
the summary's huge-page warning, which names weights off huge pages only when the run asked
for huge pages."""

from __future__ import annotations

import pytest
from widths import TWO_CORES_SPEC, Forced

import ckeir
from ckeir.backends.llvm.width import WidthPolicy
from ckeir.ranks import run_rank
from ckeir.reports.run import linux_warnings, run_report, summary_line

N = 12


@pytest.fixture(scope="module")
def prog(tmp_path_factory):
    path = tmp_path_factory.mktemp("threads") / "m.cke"
    path.write_text(TWO_CORES_SPEC)
    with ckeir.compile(path, threads=2) as p:
        yield p


def report_of(prog, policy) -> dict:
    prog.engine.widths = policy
    figures = run_rank(prog, [1, 2, 3], N)
    return run_report(prog, [figures], bandwidth=10e9, predict=False)


def test_the_report_counts_the_tokens_run_at_each_width(prog):
    rep = report_of(prog, Forced([2, 1, 1]))
    decode, prefill = rep["decode"]["widths"][0], rep["prefill"]["widths"][0]
    assert prefill["tokens"] == {2: 3} and prefill["runs"] == {2: 1}
    # decode runs N - 1 tokens: widths 1, 1, 2, 1, 1, 2, ... after prefill's 2
    assert decode["tokens"] == {2: 3, 1: 8} and decode["threads"] == 2
    line = summary_line(rep)
    assert "\nthreads: decode ran 8 of 11 tokens on 1 of 2 threads (" in line
    assert "prefill ran" not in line


def test_the_summary_is_silent_when_every_token_ran_on_every_thread(prog):
    rep = report_of(prog, WidthPolicy.fixed(2))
    assert rep["decode"]["widths"][0]["tokens"] == {2: N - 1}
    assert rep["decode"]["widths"][0]["adaptive"] is False
    assert "threads:" not in summary_line(rep)


def linux(huge_page_bytes: int) -> dict:
    weights = {"bytes": 96 << 20, "resident_bytes": 96 << 20, "huge_page_bytes": huge_page_bytes}
    return {"context_switches": {}, "page_faults": {}, "huge_pages": {0: {"weights": weights}}}


@pytest.mark.parametrize(
    "huge,wanted,named",
    [(0, True, True), (0, None, True), (0, False, False), (96 << 20, True, False)],
)
def test_weights_off_huge_pages_are_named_only_when_huge_pages_were_wanted(huge, wanted, named):
    args = () if wanted is None else (wanted,)
    warned = linux_warnings(linux(huge), 10, *args)
    assert any("weights not on huge pages" in w for w in warned) == named


def test_a_run_without_huge_pages_reports_that_it_did_not_want_them(tmp_path):
    path = tmp_path / "m.cke"
    path.write_text(TWO_CORES_SPEC)
    for huge in (True, False):
        with ckeir.compile(path, threads=1, huge_pages=huge) as p:
            figures = run_rank(p, [1, 2, 3], 3)
            rep = run_report(p, [figures], bandwidth=10e9, predict=False)
            assert rep["huge_pages_wanted"] is huge
