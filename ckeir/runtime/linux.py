"""The Linux side of a run: where a rank's pool threads ran, what the kernel did to them
(page faults, context switches), where its memory lies (huge pages, NUMA nodes), what the
hardware counted (`perf_event_open`), and the choice to pin the threads to CPUs.

Everything is read for one process's own threads by their Linux thread ids
(`Pool.thread_ids`), from /proc and /sys and one system call; nothing needs privileges
beyond `perf_event_paranoid` <= 2 (user-space counting of one's own threads).  A rank
samples its threads at the phase boundaries (`RunWatch`): before prefill, after prefill
(the first token), after decode; the report puts every rank's figures side by side."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
from pathlib import Path

import attrs

from ckeir.backends.llvm.host import usable_cpu_ids
from ckeir.runtime import memory

# phase -> the boundaries it lies between (RunWatch.mark names the end of each)
PHASES = {"prefill": ("start", "prefill"), "decode": ("prefill", "decode")}

# Unless the schedule or `ckec run --pin/--no-pin` says otherwise, pool threads are left to the
# OS.  Measured with benchmarks/pinning.py (SmolLM2 decode, tok/s pinned / unpinned, best of
# 5; this 2-core VM shared with other work, load average 6-7, so "quiet" is not): with ops
# shared out in parts claimed by whichever thread comes, one rank x 2 threads 0.58x quiet
# and 0.96x beside one busy process (medians 0.96x and 0.75x): an unpinned thread leaves a
# CPU another process holds, a pinned one waits for it; the 2-stage pipeline on local ranks
# 1.07x and 0.88x.  (With the pool before parts, whose threads waited for each other at
# every op, pinning won 1.10x and 2.59x on one rank: 222 involuntary switches a token
# unpinned beside the busy process, 5 pinned.)
PIN_DEFAULT = False


# ---- one thread, as /proc sees it -------------------------------------------------------------


@attrs.frozen
class ThreadSample:
    """A thread's kernel counters at one instant (cumulative since the thread started)."""

    cpu: int  # the CPU it last ran on
    minor_faults: int
    major_faults: int
    voluntary_switches: int  # it waited (futex sleep, I/O)
    involuntary_switches: int  # the kernel took the CPU away (time slice over, preempted)


def _task(thread_id: int) -> Path:
    return Path(f"/proc/self/task/{thread_id}")


def thread_sample(thread_id: int) -> ThreadSample | None:
    """The counters of this process's thread `thread_id`; None once it has ended."""
    try:
        stat = (_task(thread_id) / "stat").read_text()
        status = (_task(thread_id) / "status").read_text()
    except OSError:
        return None
    # fields after the command name, which may hold spaces and parentheses: field N of
    # proc(5) is rest[N - 3]
    rest = stat[stat.rindex(")") + 2 :].split()
    switches = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key.endswith("ctxt_switches"):
            switches[key] = int(value)
    return ThreadSample(
        cpu=int(rest[39 - 3]),
        minor_faults=int(rest[10 - 3]),
        major_faults=int(rest[12 - 3]),
        voluntary_switches=switches.get("voluntary_ctxt_switches", 0),
        involuntary_switches=switches.get("nonvoluntary_ctxt_switches", 0),
    )


def allowed_cpus(thread_id: int) -> list[int]:
    """The CPUs the thread may run on (its affinity mask); [] once it has ended."""
    try:
        return sorted(os.sched_getaffinity(thread_id))
    except OSError:
        return []


# ---- pinning -----------------------------------------------------------------------------------


def wants_pinning(asked: bool | None, declared: bool | None) -> bool:
    """The run's choice: the command line's (`--pin/--no-pin`), else the schedule's
    (`threads pinned|unpinned`), else the measured default (`PIN_DEFAULT`)."""
    for choice in (asked, declared):
        if choice is not None:
            return choice
    return PIN_DEFAULT


def local_slot(rank: int) -> int:
    """This rank's index among the ranks on this machine: the MPI launcher's local rank
    where it says (mpiexec of MPICH or Open MPI), else the rank (local ranks are all here)."""
    for name in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return rank


def pin_cpus(threads: int, slot: int, usable: tuple[int, ...]) -> list[int]:
    """CPU of each pool thread of the rank in `slot`: consecutive CPUs of the usable ones,
    rank after rank, so that ranks on one machine never share a CPU while there are enough
    (beyond that they wrap around)."""
    return [usable[(slot * threads + tid) % len(usable)] for tid in range(threads)]


def pin_plan(threads: int, rank: int) -> list[int]:
    """The CPU of each of a rank's pool threads when it pins them."""
    return pin_cpus(threads, local_slot(rank), usable_cpu_ids())


@contextlib.contextmanager
def pinned(thread_ids: dict[int, int], cpus: list[int] | None):
    """Pool thread tid runs only on `cpus[tid]` inside the block (None: nothing changes).
    The masks are put back on leaving: tid 0 is the caller's own thread, and threads it
    starts later inherit its mask (a later pool would have every thread on one CPU)."""
    if cpus is None:
        yield
        return
    before = {tid: allowed_cpus(t) for tid, t in thread_ids.items()}
    try:
        for tid, t in thread_ids.items():
            os.sched_setaffinity(t, {cpus[tid]})
        yield
    finally:
        for tid, t in thread_ids.items():
            with contextlib.suppress(OSError):
                if before[tid]:
                    os.sched_setaffinity(t, before[tid])


# ---- hardware counters -------------------------------------------------------------------------

# perf_event_attr: type, size, config at 0; read_format at 32; the flag bits at 40.
_ATTR_BYTES = 128
_READ_TIMES = 1 | 2  # PERF_FORMAT_TOTAL_TIME_ENABLED | _RUNNING: scale multiplexed counts
_USER_ONLY = (1 << 5) | (1 << 6)  # exclude_kernel, exclude_hv: allowed at paranoid 2
_FD_CLOEXEC = 8
_SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}.get(os.uname().machine)
_HW, _SW, _CACHE = 0, 1, 3
_MISS = 1 << 16  # cache event: (cache) | (op read = 0) << 8 | (result miss) << 16

HARDWARE = {
    "cycles": (_HW, 0),
    "instructions": (_HW, 1),
    "llc_misses": (_CACHE, 2 | _MISS),
    "dtlb_misses": (_CACHE, 3 | _MISS),
}
# Counted by the kernel, so readable on any machine the system call is allowed on.  They are
# opened kernel side included (a migration happens in the kernel: user-only counts none),
# which perf_event_paranoid 2 refuses to a user without CAP_PERFMON: then task-clock is
# counted in user space only, and migrations not at all.
SOFTWARE = {"task_clock_ns": (_SW, 1), "cpu_migrations": (_SW, 4)}
_KERNEL_ONLY = {"cpu_migrations"}

# A test hook: CKEIR_PERF_FAIL=EACCES (any errno name) makes every open fail with it.
FAIL_ENV = "CKEIR_PERF_FAIL"

_libc = ctypes.CDLL(None, use_errno=True)


def perf_paranoid() -> int | None:
    try:
        return int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    except (OSError, ValueError):
        return None


def open_counter(thread_id: int, kind: int, config: int, user_only: bool = True) -> int:
    """A counting perf event for one thread (`user_only`: in user space only); its file
    descriptor.  Raises OSError with the kernel's errno."""
    forced = os.environ.get(FAIL_ENV)
    if forced:
        code = getattr(errno, forced, errno.EPERM)
        raise OSError(code, os.strerror(code))
    if _SYS_PERF_EVENT_OPEN is None:
        raise OSError(errno.ENOSYS, "perf_event_open: unknown system call on this architecture")
    attr = ctypes.create_string_buffer(_ATTR_BYTES)
    struct.pack_into("IIQ", attr, 0, kind, _ATTR_BYTES, config)
    struct.pack_into("QQ", attr, 32, _READ_TIMES, _USER_ONLY if user_only else 0)
    fd = _libc.syscall(_SYS_PERF_EVENT_OPEN, attr, thread_id, -1, -1, _FD_CLOEXEC)
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return fd


def read_counter(fd: int) -> float:
    """The event's count so far, scaled up when the kernel multiplexed it off the PMU."""
    value, enabled, running = struct.unpack("QQQ", os.read(fd, 24))
    return value * enabled / running if running and running < enabled else float(value)


def unavailable_reason(error: OSError) -> str:
    """Why hardware counters cannot be read, in terms a user can act on."""
    code = error.errno
    name = errno.errorcode.get(code, str(code))
    paranoid = perf_paranoid()
    if code in (errno.ENOENT, errno.EOPNOTSUPP, errno.ENODEV):
        pmu = Path("/sys/bus/event_source/devices/cpu").exists()
        return f"perf_event_open: {name}: the CPU's counters are not exposed here" + (
            "" if pmu else " (no PMU in /sys/bus/event_source/devices: a VM without one)"
        )
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"perf_event_open: {name}: perf_event_paranoid is {paranoid} (user-space counting"
            " of one's own threads needs <= 2, or CAP_PERFMON), or a container's seccomp"
            " filter refuses the call"
        )
    if code == errno.ENOSYS:
        return f"perf_event_open: {name}: the kernel or a container's filter lacks the call"
    return f"perf_event_open: {name} ({error.strerror})"


def _open_on_all(thread_ids, kind: int, config: int, user_only: bool = True) -> list[int]:
    """One event's descriptors, one per thread: all of them, or none (and the OSError)."""
    fds: list[int] = []
    try:
        for t in thread_ids:
            fds.append(open_counter(t, kind, config, user_only))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def _open_software(name: str, thread_ids, config: int) -> list[int]:
    """A software event kernel side included, else (refused) in user space only where it
    still counts something."""
    try:
        return _open_on_all(thread_ids, _SW, config, user_only=False)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM) or name in _KERNEL_ONLY:
            raise
        return _open_on_all(thread_ids, _SW, config)


class Counters:
    """Events counted on every pool thread (summed over them).  Hardware events are
    all-or-none: if one cannot be opened, `reason` says why and only software ones count;
    `software_reason` says why a software one is missing."""

    def __init__(self, thread_ids, events: dict | None = None):
        self.fds: dict[str, list[int]] = {}
        self.reason: str | None = None
        self.software_reason: str | None = None
        wanted = events if events is not None else {**HARDWARE, **SOFTWARE}
        for name, (kind, config) in wanted.items():
            if kind == _SW:
                try:
                    self.fds[name] = _open_software(name, thread_ids, config)
                except OSError as e:
                    self.software_reason = self.software_reason or unavailable_reason(e)
            elif self.reason is None:  # after one failure, a partial set would mislead
                try:
                    self.fds[name] = _open_on_all(thread_ids, kind, config)
                except OSError as e:
                    self.reason = unavailable_reason(e)
                    for opened in [n for n in self.fds if wanted[n][0] != _SW]:
                        self.close_event(opened)

    def read(self) -> dict[str, float]:
        return {name: sum(read_counter(fd) for fd in fds) for name, fds in self.fds.items()}

    def close_event(self, name: str) -> None:
        for fd in self.fds.pop(name, []):
            os.close(fd)

    def close(self) -> None:
        for name in list(self.fds):
            self.close_event(name)


# ---- a rank's run, sampled at phase boundaries -----------------------------------------------


class RunWatch:
    """Samples a rank's pool threads before prefill, after prefill and after decode.

    `mark("start")` before prefill, `mark("prefill")` when the first token exists,
    `mark("decode")` when the last does;
    `figures()` then gives the rank's `linux` figures (plain data, for the report)."""

    def __init__(self, thread_ids: dict[int, int], pinned_to: list[int] | None = None):
        self.thread_ids = dict(thread_ids)
        self.pinned_to = pinned_to
        self.counters = Counters(self.thread_ids.values())
        self.samples: dict[str, dict] = {}
        self.perf: dict[str, dict] = {}
        self.allowed: dict[int, list[int]] = {}

    def mark(self, boundary: str) -> None:
        """Sample every thread at `boundary`: 'start', then the end of each phase."""
        self.samples[boundary] = {tid: thread_sample(t) for tid, t in self.thread_ids.items()}
        self.perf[boundary] = self.counters.read()
        if boundary == "decode":  # while the run's affinity still holds
            self.allowed = {tid: allowed_cpus(t) for tid, t in self.thread_ids.items()}
            self.counters.close()

    def figures(self) -> dict:
        last = self.samples.get("decode") or self.samples.get("prefill") or self.samples["start"]
        return {
            "pinned": self.pinned_to is not None,
            "threads": {
                tid: {
                    "thread_id": t,
                    "cpu": last[tid].cpu if last[tid] else None,
                    "allowed_cpus": self.allowed.get(tid) or allowed_cpus(t),
                }
                for tid, t in self.thread_ids.items()
            },
            "page_faults": self._phases(("minor_faults", "major_faults"), ("minor", "major")),
            "context_switches": self._phases(
                ("voluntary_switches", "involuntary_switches"), ("voluntary", "involuntary")
            ),
            "perf": self._perf(),
        }

    def _phases(self, fields, names) -> dict:
        """phase -> {name: summed over the threads} (and per thread) of counter deltas."""
        out = {}
        for phase, (a, b) in PHASES.items():
            if a not in self.samples or b not in self.samples:
                continue
            per_thread = {
                tid: {
                    n: getattr(self.samples[b][tid], f) - getattr(self.samples[a][tid], f)
                    for f, n in zip(fields, names, strict=True)
                }
                for tid in self.thread_ids
                if self.samples[a][tid] and self.samples[b][tid]
            }
            out[phase] = {n: sum(t[n] for t in per_thread.values()) for n in names}
            out[phase]["threads"] = per_thread
        return out

    def _perf(self) -> dict:
        c = self.counters
        out: dict = {
            "hardware": c.reason is None,
            "reason": c.reason,
            "software_reason": c.software_reason,
        }
        for phase, (a, b) in PHASES.items():
            if a in self.perf and b in self.perf:
                out[phase] = {k: self.perf[b][k] - self.perf[a][k] for k in self.perf[b]}
        return out

    def close(self) -> None:
        self.counters.close()


# ---- memory: huge pages and NUMA nodes ---------------------------------------------------------


def merged(regions) -> list[tuple[int, int]]:
    """(address, length) regions as disjoint sorted intervals [start, end)."""
    out: list[list[int]] = []
    for start, length in sorted((a, n) for a, n in regions if n > 0):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], start + length)
        else:
            out.append([start, start + length])
    return [(a, b) for a, b in out]


def numa_nodes() -> dict[int, list[int]]:
    """NUMA node -> its CPUs, from /sys (one node 0 with every CPU where it is absent)."""
    nodes = {}
    for d in sorted(Path("/sys/devices/system/node").glob("node[0-9]*")):
        try:
            nodes[int(d.name[4:])] = _cpu_list((d / "cpulist").read_text())
        except (OSError, ValueError):
            continue
    return nodes or {0: list(range(os.cpu_count() or 1))}


def _cpu_list(text: str) -> list[int]:
    """'0-3,8' -> [0, 1, 2, 3, 8]."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            cpus += range(int(lo), int(hi or lo) + 1)
    return cpus


def pages_by_node(regions) -> dict[int, int]:
    """NUMA node -> resident bytes of `regions` on it, from /proc/self/numa_maps (a mapping
    partly covered counts its share)."""
    try:
        text = Path("/proc/self/numa_maps").read_text()
        ranges = {
            int(a, 16): int(b, 16)
            for a, b in (ln.split(" ", 1)[0].split("-") for ln in _maps_lines())
        }
    except OSError:
        return {}
    spans = merged(regions)
    out: dict[int, float] = {}
    for line in text.splitlines():
        fields = line.split()
        start = int(fields[0], 16)
        end = ranges.get(start)
        if end is None:
            continue
        page = next(
            (int(f.split("=")[1]) * 1024 for f in fields if f.startswith("kernelpagesize_kB=")),
            4096,
        )
        share = sum(max(0, min(b, end) - max(a, start)) for a, b in spans) / (end - start)
        if share <= 0:
            continue
        for f in fields:
            if f[:1] == "N" and "=" in f:
                node, pages = f[1:].split("=")
                out[int(node)] = out.get(int(node), 0) + int(pages) * page * share
    return {n: int(v) for n, v in sorted(out.items())}


def _maps_lines() -> list[str]:
    return Path("/proc/self/maps").read_text().splitlines()


def memory_figures(regions, thread_cpus: dict[int, int | None]) -> dict:
    """A rank's memory as Linux holds it: huge-page bytes of its weights, arenas and KV
    cache (`regions`: `runtime.memory.Region`s), and the NUMA nodes its threads and weight
    pages are on."""
    nodes = numa_nodes()
    node_of = {cpu: n for n, cpus in nodes.items() for cpu in cpus}
    weights = [(r.address, r.length) for r in regions if r.name == "weights"]
    return {
        "huge_pages": memory.huge_pages_report(regions),
        "numa": {
            "nodes": sorted(nodes),
            "threads": {tid: node_of.get(cpu) for tid, cpu in thread_cpus.items()},
            "weights": pages_by_node(weights),
        },
    }
