"""Run fuzz cases through ckec's own entry point, each bounded in time and memory.

A case is a ckec command line plus the files it reads.  Workers are forked from this
process (which has imported ckeir once) and run many cases each: a case gets a fresh
directory, an address-space limit (`RLIMIT_AS`) and the CLI's `main(argv)` with stdout and
stderr captured, exactly as `ckec` would run it.  The parent enforces the time limit: a worker
that overruns is killed with SIGKILL (with everything it started: each worker leads its own
process group), the case counts as a hang and a new worker takes its place.

Verdicts:
    clean     ckec finished, or refused with a CkeError (exit 1) or a usage error
    accepted  ckec finished on an input it must refuse (`Case.refuse` says why), or a pass
              run twice printed other IR than once (`Case.same_as`)
    rejected  ckec refused an input it must take (`Case.succeed`: a spec or model file of the
              repository, untouched)
    internal  any other exception ("internal error … this is a bug in ckeir", exit 2), or a
              local rank that failed mid-run (inputs are checked before ranks start)
    oom       MemoryError: the case hit its address-space limit
    hang      the case ran past its time limit
    crash     the worker died by a signal (SIGSEGV, SIGABRT from `LLVM ERROR`, …)
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import itertools
import multiprocessing
import multiprocessing.connection
import os
import re
import resource
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import attrs

VERDICTS = ("clean", "accepted", "rejected", "internal", "oom", "hang", "crash")
GiB, MiB = 1 << 30, 1 << 20

DEFAULT_MEMORY = 4 * GiB  # address space a spec or IR case may add to its worker
DEFAULT_TIMEOUT = 15.0  # seconds; the slowest clean case of a busy 2-core machine is ~2 s
CASE_DIR = "{dir}"  # stands for the case's directory in argv


@attrs.frozen
class Case:
    """One ckec invocation: `argv` (with `{dir}` for the case directory) over `files`."""

    kind: str  # spec | ir | file
    name: str  # the seed and the mutations that made it, for humans
    argv: tuple[str, ...]
    files: dict[str, bytes] = attrs.field(factory=dict, eq=False)
    memory: int = DEFAULT_MEMORY
    timeout: float = DEFAULT_TIMEOUT
    refuse: str = ""  # why ckec must refuse this case ("" when it may well succeed)
    # when the case succeeds, this command line must print the same (or the case is nonsense
    # accepted: `same_as_why` says what was expected)
    same_as: tuple[str, ...] = ()
    same_as_why: str = ""
    succeed: bool = False  # ckec must take this case (a refusal is a bug too)


@attrs.frozen
class Outcome:
    case: Case
    verdict: str
    rc: int | None = None
    error: str = ""  # "TypeError: message" for an internal error or oom
    frame: str = ""  # the innermost traceback frame, "ckeir/ir/parser.py:212 in parse_attr"
    detail: str = (
        ""  # the traceback (internal error) or faulthandler's dump and LLVM's words (crash)
    )
    seconds: float = 0.0
    peak: int | None = None  # peak resident bytes the case added to its worker
    message: str = ""  # the first line ckec printed to stderr (what a refused case said)

    @property
    def signature(self) -> str:
        """What distinguishes one bug from another: the exception type and where it was
        raised (file and function, not the line, which moves as the code changes)."""
        if self.verdict in ("internal", "crash"):  # exception type, or signal (+ LLVM ERROR)
            what = self.error.split(":", 1)[0] if self.verdict == "internal" else self.error
            where = re.sub(r":\d+ in ", ":", self.frame)
            return f"{what} at {where}" if where else what
        if self.verdict in ("accepted", "rejected"):
            return self.error
        return self.verdict

    def summary(self) -> str:
        head = f"{self.verdict} [{self.case.kind}] {self.case.name}"
        if self.error:
            head += f" | {self.error[:200]}"
        if self.frame:
            head += f" | {self.frame}"
        return head


def _first_error(text: str) -> str:
    for line in text.splitlines():
        if "error" in line:
            return line[:300]
    return ""


# ---- the worker side --------------------------------------------------------------------------


def prepare_case_dir(path: Path, case: Case, environment: Callable[[Path], None]) -> None:
    """A fresh directory holding the case's files and the shared environment (imports,
    odd paths) the mutators refer to."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    environment(path)
    for name, data in case.files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def case_argv(case: Case, path: Path, argv=None) -> list[str]:
    return [a.replace(CASE_DIR, str(path)) for a in (case.argv if argv is None else argv)]


def _status(field: str) -> int:
    """A byte count from /proc/self/status (VmRSS, VmHWM, VmSize)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    """Restart the peak-RSS watermark (VmHWM) at the current RSS (Linux ≥ 4.0)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


@contextlib.contextmanager
def _address_space_limit(extra: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _status("VmSize") + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+),? in (?P<fn>\S+)', re.M)


def last_frame(traceback_text: str) -> str:
    """`ckeir/ir/parser.py:212 in parse_attr` from a printed traceback's innermost frame."""
    frames = list(_FRAME.finditer(traceback_text))
    if not frames:
        return ""
    m = frames[-1]
    return f"{_short_path(m['file'])}:{m['line']} in {m['fn']}"


def crash_frame(log: str) -> str:
    """The innermost Python frame of faulthandler's dump (it prints the innermost first)."""
    at = log.rfind("Fatal Python error")
    m = _FRAME.search(log, at) if at >= 0 else None
    return f"{_short_path(m['file'])}:{m['line']} in {m['fn']}" if m else ""


def _short_path(file: str) -> str:
    """A path from where it stops depending on the machine: the package or the repository."""
    for marker in ("/site-packages/", "/ckeir/", "/tests/"):
        at = file.rfind(marker)
        if at >= 0:
            return file[at + 1 :] if marker != "/site-packages/" else file[at + len(marker) :]
    return "/".join(file.split("/")[-2:])


_INTERNAL = re.compile(r"^internal error: (?P<error>.*)$", re.M)
# A local rank that fails mid-run: ckec checks its inputs before ranks start, so (without
# injected faults) this is a bug in ckeir too, reported as a rank's failure
_RANK_FAILED = re.compile(r"^error: (?P<error>rank \d+ failed: .*)$", re.M)
_MEMORY_ERRORS = ("MemoryError", "_ArrayMemoryError")


def classify(case: Case, rc, stderr: str, seconds: float, peak: int | None) -> Outcome:
    """The verdict for a case whose `main` returned `rc` after printing `stderr`."""
    if stderr.startswith("accepted: "):
        error = stderr.strip()
        return Outcome(case, "accepted", rc, error, seconds=seconds, peak=peak)
    m = _INTERNAL.search(stderr) or _RANK_FAILED.search(stderr)
    if m is None:
        if rc == 0 and case.refuse:
            error = f"accepted: {case.refuse}"
            return Outcome(case, "accepted", rc, error, seconds=seconds, peak=peak)
        message = _first_error(stderr) if rc else ""
        if rc and case.succeed:
            error = f"rejected: {re.sub(r'/[^ :]*/case[0-9]+/', '', message)}"
            return Outcome(case, "rejected", rc, error, seconds=seconds, peak=peak)
        return Outcome(case, "clean", rc, seconds=seconds, peak=peak, message=message)
    error = m["error"]
    if m.re is _RANK_FAILED:  # "rank failed: …": the signature groups every rank's failure
        error = re.sub(r"^rank \d+ failed", "rank failed", error)
    memory = any(e in error for e in _MEMORY_ERRORS)
    verdict = "oom" if memory else "internal"
    frame = last_frame(stderr)
    return Outcome(case, verdict, rc, error, frame, stderr[-3000:], seconds, peak)


def run_in_worker(case: Case, path: Path, environment: Callable[[Path], None]) -> Outcome:
    """Run one case here, in a worker, through `ckeir.cli.main`."""
    os.chdir(path.parent)
    prepare_case_dir(path, case, environment)
    os.chdir(path)
    _reset_peak()
    start_rss = _status("VmRSS")
    t0 = time.perf_counter()
    rc, out, err = _run_cli(case_argv(case, path), case.memory)
    if rc == 0 and case.same_as:
        rc2, out2, _ = _run_cli(case_argv(case, path, case.same_as), case.memory)
        if rc2 == 0 and out2 != out:
            rc = None
            err = f"accepted: {case.same_as_why}\n"
    seconds = time.perf_counter() - t0
    peak = max(_status("VmHWM") - start_rss, 0)
    os.chdir(path.parent)
    return classify(case, rc, err, seconds, peak)


def _run_cli(argv: list[str], memory: int) -> tuple[int | None, str, str]:
    """(exit code, stdout, stderr) of `ckec argv`, under an address-space limit."""
    from ckeir import cli

    out, err = io.StringIO(), io.StringIO()
    try:
        with _address_space_limit(memory), contextlib.redirect_stdout(out):
            with contextlib.redirect_stderr(err):
                rc = _main(cli, argv, err)
    except MemoryError:
        rc = None
        err.write("internal error: MemoryError: raised outside the CLI's handler\n")
    return rc, out.getvalue(), err.getvalue()


def _main(cli, argv: list[str], err: io.StringIO):
    """`cli.main`, with what would escape it (usage errors exit through SystemExit; anything
    that is not an Exception) turned into an exit code and an internal error line."""
    import traceback

    try:
        return cli.main(argv)
    except SystemExit as e:  # argparse's usage errors: exit 2 with "usage: …" (clean)
        return e.code if isinstance(e.code, int) else 1
    except MemoryError:
        raise
    except BaseException as e:  # noqa: BLE001 — escaping main is a bug whatever it is
        traceback.print_exc(file=err)
        err.write(f"internal error: {type(e).__name__}: {e} (escaped cli.main)\n")
        return None


def _worker_main(conn, home: str, environment) -> None:
    os.setpgrp()  # the parent kills this worker and whatever it started as one group
    os.environ["CKEIR_DEBUG"] = "1"  # the CLI prints the traceback of an internal error
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    # Native code (LLVM, ranks) writes to fds 1 and 2, faulthandler the Python stack of a
    # fatal signal: keep both for the crash report.
    log = os.open(Path(home) / "native.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    faulthandler.enable(file=2, all_threads=False)
    for n in itertools.count():
        try:
            case = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if case is None:
            return
        os.ftruncate(2, 0)
        # a new directory name for each case: nothing cached under a path (the GGUF index
        # is keyed by path, size and mtime) carries over from the case before
        path = Path(home) / f"case{n}"
        with contextlib.suppress(OSError):
            shutil.rmtree(Path(home) / f"case{n - 1}")
        outcome = run_in_worker(case, path, environment)
        conn.send(attrs.evolve(outcome, case=attrs.evolve(case, files={})))  # the parent has them


# ---- the parent side --------------------------------------------------------------------------


class _Worker:
    def __init__(self, ctx, home: Path, environment):
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.conn, child = ctx.Pipe()
        # not a daemon: a case may start local ranks, and daemons may not have children (a
        # worker whose parent died leaves at its next recv)
        self.proc = ctx.Process(target=_worker_main, args=(child, str(home), environment))
        self.proc.start()
        child.close()
        self.job: tuple[int, Case] | None = None
        self.deadline = 0.0

    def give(self, index: int, case: Case) -> None:
        self.job = (index, case)
        self.deadline = time.monotonic() + case.timeout
        self.conn.send(case)

    def native_log(self) -> str:
        try:
            return (self.home / "native.log").read_text(errors="replace")[:8000]
        except OSError:
            return ""

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.join(5)
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.proc.join(5)
        if self.proc.is_alive():
            self.kill()
        # ranks or helpers a case started outlive a worker that returned normally
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def import_ckeir() -> None:
    """Every module of ckeir, imported once before the workers fork: they all run one
    snapshot of the code, even while a shared working tree changes under a long run (MPI
    stays out: importing mpi4py starts MPI)."""
    import importlib
    import pkgutil

    import ckeir
    import ckeir.cli  # noqa: F401  (the entry point must import; the rest may be optional)

    for module in pkgutil.walk_packages(ckeir.__path__, "ckeir."):
        if "mpi" not in module.name:
            with contextlib.suppress(Exception):
                importlib.import_module(module.name)


class Pool:
    """Forked workers running cases; `run` yields (index, Outcome) as cases finish."""

    def __init__(self, home: Path, environment: Callable[[Path], None], workers: int = 1):
        self.home = Path(home)
        self.environment = environment
        self.size = max(1, workers)
        self._ctx = multiprocessing.get_context("fork")
        self._serial = 0
        self._workers: list[_Worker] = []

    def __enter__(self) -> Pool:
        import_ckeir()
        # the workers' disk cache is the pool's own: thousands of hostile cases stay out of
        # the user's cache, and the user's cache cannot change what a case does
        self._saved_cache = os.environ.get("CKEIR_CACHE_DIR")
        os.environ["CKEIR_CACHE_DIR"] = str(self.home / "cache")
        self._workers = [self._spawn() for _ in range(self.size)]
        return self

    def __exit__(self, *exc) -> None:
        for w in self._workers:
            w.stop()
        self._workers = []
        if self._saved_cache is None:
            os.environ.pop("CKEIR_CACHE_DIR", None)
        else:
            os.environ["CKEIR_CACHE_DIR"] = self._saved_cache

    def _spawn(self) -> _Worker:
        self._serial += 1
        return _Worker(self._ctx, self.home / f"w{self._serial}", self.environment)

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = self._spawn()

    def run(self, cases: Iterable[Case]) -> Iterator[tuple[int, Outcome]]:
        pending = iter(enumerate(cases))
        exhausted = False
        while True:
            for w in self._workers:
                if w.job is None and not exhausted:
                    nxt = next(pending, None)
                    if nxt is None:
                        exhausted = True
                    else:
                        w.give(*nxt)
            busy = [w for w in self._workers if w.job is not None]
            if not busy:
                return
            wait = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = multiprocessing.connection.wait([w.conn for w in busy], timeout=wait)
            for w in busy:
                done = self._collect(w, ready)
                if done is not None:
                    yield done

    def _collect(self, w: _Worker, ready) -> tuple[int, Outcome] | None:
        index, case = w.job
        if w.conn in ready:
            try:
                outcome = attrs.evolve(w.conn.recv(), case=case)
            except (EOFError, OSError):
                outcome = self._crashed(w, case)
                self._replace(w)
            w.job = None
            return index, outcome
        if time.monotonic() >= w.deadline:
            self._replace(w)
            return index, Outcome(case, "hang", seconds=case.timeout)
        return None

    def _crashed(self, w: _Worker, case: Case) -> Outcome:
        w.proc.join(5)
        code = w.proc.exitcode
        if code is not None and code < 0:
            error = signal.Signals(-code).name
        else:
            error = f"worker exited with status {code}"
        log = w.native_log()
        llvm = re.search(r"^LLVM ERROR: .*$", log, re.M)
        if llvm:
            error += " " + llvm.group()[:160]
        return Outcome(case, "crash", error=error, frame=crash_frame(log), detail=log)
