"""The Python API pins as `ckec run` does: `ckeir.compile(spec, pin=...)` or `pin=` on
`stream`/`generate`, else the schedule's `threads pinned|unpinned`, else
`linux.PIN_DEFAULT`.  Observed on the pool's real threads while tokens are being made
(their affinity masks), and after (masks given back)."""

import os
from pathlib import Path

import pytest
from run_evidence import pipeline_spec

import ckeir
from ckeir.backends.llvm.host import usable_cpu_ids
from ckeir.ranks import run_local
from ckeir.runtime import linux

ROOT = Path(__file__).resolve().parents[2]
TWO_CPUS = pytest.mark.skipif(len(usable_cpu_ids()) < 2, reason="needs 2 usable CPUs")
IDS = [1, 2, 3]


def odd_spec(tmp_path, schedule_line: str = "") -> Path:
    """specs/odd.cke on a node of 2 cores (one rank, 2 pool threads), with `schedule_line`
    added to its schedule."""
    text = (ROOT / "specs/odd.cke").read_text().replace("cores 1;", "cores 2;")
    if schedule_line:
        text = text.replace("  run odd on solo\n", f"  run odd on solo\n  {schedule_line}\n")
    path = tmp_path / "odd2.cke"
    path.write_text(text)
    return path


def masks_while_streaming(prog, **kwargs) -> tuple[list, dict]:
    """Each pool thread's allowed CPUs at every token of a `stream` run, and after it."""
    threads = prog.engine.pool.thread_ids()
    during = []
    for _ in prog.stream(IDS, 4, **kwargs):
        during.append({tid: sorted(os.sched_getaffinity(t)) for tid, t in threads.items()})
    after = {tid: sorted(os.sched_getaffinity(t)) for tid, t in threads.items()}
    return during, after


def assert_pinned(during: list, threads: int) -> None:
    for masks in during:
        assert all(len(m) == 1 for m in masks.values()), masks
        assert len({m[0] for m in masks.values()}) == min(threads, len(usable_cpu_ids()))


def assert_free(masks: dict) -> None:
    assert all(m == list(usable_cpu_ids()) for m in masks.values()), masks


@TWO_CPUS
def test_compile_pin_true_pins_the_pool_while_generating(tmp_path):
    with ckeir.compile(odd_spec(tmp_path), pin=True) as prog:
        assert prog.threads == 2
        during, after = masks_while_streaming(prog)
    assert len(during) == 4
    assert_pinned(during, 2)
    assert_free(after)  # the masks come back: a pool made later is not stuck on one CPU


@TWO_CPUS
def test_the_schedule_pins_an_api_run(tmp_path):
    with ckeir.compile(odd_spec(tmp_path, "threads pinned")) as prog:
        during, after = masks_while_streaming(prog)
        assert_pinned(during, 2)
        assert_free(after)
        # a call's own choice wins over the schedule's
        during, _ = masks_while_streaming(prog, pin=False)
        for masks in during:
            assert_free(masks)


def test_unstated_the_api_follows_the_measured_default(tmp_path):
    with ckeir.compile(odd_spec(tmp_path)) as prog:
        during, _ = masks_while_streaming(prog)
    for masks in during:
        pinned = all(len(m) == 1 for m in masks.values()) and len(usable_cpu_ids()) > 1
        assert pinned == linux.PIN_DEFAULT


@TWO_CPUS
def test_generate_pins_and_gives_the_same_ids(tmp_path):
    with ckeir.compile(odd_spec(tmp_path)) as prog:
        threads = prog.engine.pool.thread_ids()
        seen = []
        decode = prog.engine.decode

        def watched(token, pos):
            seen.append([sorted(os.sched_getaffinity(t)) for t in threads.values()])
            return decode(token, pos)

        prog.engine.decode = watched
        pinned = prog.generate(IDS, 4, pin=True)
        assert seen and all(len(m) == 1 for masks in seen for m in masks)
        seen.clear()
        free = prog.generate(IDS, 4, pin=False)
        assert seen and all(m == list(usable_cpu_ids()) for masks in seen for m in masks)
    assert pinned == free


@TWO_CPUS
def test_local_ranks_follow_the_programs_pin(tmp_path):
    """A launcher Program's `pin` reaches its local ranks (one thread each, on CPUs of
    their own), as `ckec run --pin` does."""
    prog = ckeir.compile(pipeline_spec(tmp_path), backend="reference", pin=True)
    out = run_local(prog, IDS, 4)
    lx = {r: fig["linux"] for r, fig in enumerate(out["ranks"])}
    assert all(x["pinned"] for x in lx.values())
    cpus = [t["allowed_cpus"] for x in lx.values() for t in x["threads"].values()]
    assert all(len(c) == 1 for c in cpus) and len({c[0] for c in cpus}) == 2
