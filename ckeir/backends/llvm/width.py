"""How many of a pool's threads take part in each run: measured, per phase, run by run.

Two threads on two cores beside one busy process cannot all run: the OS takes one of them
off its CPU for a time slice now and then, and every op whose part it holds waits for it.
One thread alone then decodes faster than two (benchmarks/contention.py).  Like OpenMP's
`OMP_DYNAMIC` or a work-stealing runtime that parks threads, the engine narrows itself:
before each run (a decode token, a prefill call) it asks `WidthPolicy.choose` how many
threads to use, and tells `observe` how long the run took.  Every kernel's result is the
same at any width (parts are cut by shape, and reduced in a fixed order), so this changes
the time, never the tokens.

The policy, per phase:

- an estimate of seconds per token for each width it has run (EWMA; restarted when a width
  runs again after more than a probe's length away, since the old figure describes another
  moment);
- it runs the width with the lowest estimate, switching when another is lower by `MARGIN`;
- now and then it probes the other widths for `probe_runs` runs; a probe that finds the
  current width still best doubles the interval to the next (up to `max_interval` runs), a
  switch resets it to `min_interval`.  On a quiet machine a decode probe costs 2 tokens at
  one thread in ~256 (< 0.5% of the time); beside a busy process, the pool stays on one
  thread and tries the wider width as rarely;
- when the current width's estimate gets `SLOWER` than the best it has shown (load came),
  or another phase of the same pool switched, the next probe is due at once: the pool
  narrows within a few runs.

`WidthPolicy.fixed` always answers the widest width (`--threads-fixed`,
`CKEIR_ADAPTIVE_THREADS=0`).  An engine that steps a program through several pool runs per
token (`runtime.distributed.RankEngine`) takes the width once per token with `run`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import attrs

ENV_SWITCH = "CKEIR_ADAPTIVE_THREADS"
ALPHA = 0.3  # EWMA weight of a new run's seconds per token
MARGIN = 0.03  # another width must be this much faster before the pool switches to it
SLOWER = 1.5  # the current width this much slower than its best, twice running: probe now
SLOWER_RUNS = 2


def adaptive_wanted(option: bool | None = None) -> bool:
    """Whether a pool's width adapts: the caller's choice when it made one, else the
    environment (`CKEIR_ADAPTIVE_THREADS=0` opts out), else yes."""
    if option is not None:
        return bool(option)
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "no", "false", "off")


def candidate_widths(threads: int) -> tuple[int, ...]:
    """The widths a pool of `threads` tries, widest first: all of them, then halves down to
    one (2 -> (2, 1); 8 -> (8, 4, 2, 1)), so that probing stays cheap on wide pools."""
    out, w = [], threads
    while w > 1:
        out.append(w)
        w //= 2
    return (*out, 1)


@attrs.frozen
class Cadence:
    """How a phase probes: runs per probe, and the interval between probes (in runs)."""

    probe_runs: int
    min_interval: int
    max_interval: int


# A decode run is one token (a few ms): probes of 2 tokens, from every 16 to every 256.
DECODE = Cadence(probe_runs=2, min_interval=16, max_interval=256)
# A prefill run is one call (a prompt or a chunk of one): probe one call in 4 to 64.
PREFILL = Cadence(probe_runs=1, min_interval=4, max_interval=64)
CADENCES = {"decode": DECODE, "prefill": PREFILL}


@attrs.define
class PhaseWidth:
    """One phase's state and record."""

    widths: tuple[int, ...]
    cadence: Cadence
    best: int
    estimate: dict[int, float] = attrs.field(factory=dict)  # width -> seconds per token
    floor: dict[int, float] = attrs.field(factory=dict)  # the best estimate a width showed
    runs: dict[int, int] = attrs.field(factory=dict)  # width -> runs
    tokens: dict[int, int] = attrs.field(factory=dict)  # width -> tokens
    switches: int = 0
    probes: int = 0
    probing: int | None = None  # the width being probed
    probe_left: int = 0
    since_probe: int = 0  # runs since the last probe ended
    interval: int = 0
    clock: int = 0  # runs so far
    last: int | None = None  # the width of the last run
    slow_runs: int = 0  # consecutive runs SLOWER than the current width's best
    left: tuple[int, int, int] | None = None  # (width, run, interval) of the last switch
    updated: dict[int, int] = attrs.field(factory=dict)  # width -> the run that last fed it

    def __attrs_post_init__(self) -> None:
        self.interval = self.cadence.min_interval

    def choose(self) -> int:
        if self.probing is None and len(self.widths) > 1 and self.since_probe >= self.interval:
            self._start_probe()
        return self.probing if self.probing is not None else self.best

    def observe(self, width: int, seconds: float, tokens: int) -> None:
        per = seconds / max(tokens, 1)
        self.runs[width] = self.runs.get(width, 0) + 1
        self.tokens[width] = self.tokens.get(width, 0) + tokens
        self.clock += 1
        self.last = width
        if self.clock - self.updated.get(width, -(10**9)) > self.cadence.probe_runs + 2:
            self.estimate[width] = per  # an old figure describes another moment: restart
        else:
            self.estimate[width] += ALPHA * (per - self.estimate[width])
        self.updated[width] = self.clock
        est = self.estimate[width]
        self.floor[width] = min(self.floor.get(width, est), est)
        if self.probing is not None:
            self.probe_left -= 1
            if self.probe_left <= 0:
                self._end_probe()
            return
        self.since_probe += 1
        other = self._fastest()
        if other != self.best:
            self._switch(other)
            return
        self.slow_runs = self.slow_runs + 1 if est > SLOWER * self.floor[width] else 0
        if self.slow_runs >= SLOWER_RUNS:
            self.look_around()  # things got worse here
            self.slow_runs = 0

    def look_around(self) -> None:
        """Probe the other widths at the next run (unless probing already)."""
        self.since_probe = max(self.since_probe, self.interval)

    def _fastest(self) -> int:
        """The width to run: the current one unless another's estimate is lower by MARGIN."""
        here = self.estimate.get(self.best)
        known = {w: e for w, e in self.estimate.items() if w in self.widths}
        if here is None or not known:
            return self.best
        w = min(known, key=known.get)
        return w if known[w] < here * (1 - MARGIN) else self.best

    def _start_probe(self) -> None:
        others = [w for w in self.widths if w != self.best]
        # the width probed least recently: each in turn
        self.probing = others[self.probes % len(others)]
        self.probe_left = self.cadence.probe_runs
        self.probes += 1

    def _end_probe(self) -> None:
        self.probing = None
        self.since_probe = 0
        other = self._fastest()
        if other != self.best:
            self._switch(other)
        else:
            self.interval = min(2 * self.interval, self.cadence.max_interval)
            if self.best in self.estimate:
                self.floor[self.best] = self.estimate[self.best]  # the new normal here

    def _switch(self, width: int) -> None:
        back = self.left is not None and self.left[0] == width
        if back and self.clock - self.left[1] <= self.cadence.min_interval:
            # straight back to where it was: as a probe that found nothing better
            interval = min(2 * self.left[2], self.cadence.max_interval)
        else:
            interval = self.cadence.min_interval
        self.left = (self.best, self.clock, self.interval)
        self.best = width
        self.switches += 1
        self.since_probe = 0
        self.slow_runs = 0
        self.interval = interval

    def figures(self) -> dict:
        """What the report shows of this phase: tokens and runs at each width, switches and
        probes, and the last estimates (seconds per token)."""
        return {
            "threads": self.widths[0],
            "width": self.best,
            "tokens": dict(sorted(self.tokens.items(), reverse=True)),
            "runs": dict(sorted(self.runs.items(), reverse=True)),
            "switches": self.switches,
            "probes": self.probes,
            "seconds_per_token": dict(sorted(self.estimate.items(), reverse=True)),
        }


class WidthPolicy:
    """The width of every run of one pool, per phase (`prefill`, `decode`, or any name an
    engine uses; each gets its own estimates)."""

    def __init__(self, threads: int, adaptive: bool = True):
        self.threads = threads
        self.adaptive = adaptive and threads > 1
        self.widths = candidate_widths(threads) if self.adaptive else (threads,)
        self.phases: dict[str, PhaseWidth] = {}

    @classmethod
    def for_pool(cls, threads: int, adaptive: bool | None = None) -> WidthPolicy:
        """The policy of a pool of `threads`: adaptive unless the caller or the environment
        (`CKEIR_ADAPTIVE_THREADS=0`) said otherwise."""
        return cls(threads, adaptive_wanted(adaptive))

    @classmethod
    def fixed(cls, threads: int) -> WidthPolicy:
        return cls(threads, adaptive=False)

    def phase(self, name: str) -> PhaseWidth:
        if name not in self.phases:
            cadence = CADENCES.get(name, DECODE)
            self.phases[name] = PhaseWidth(self.widths, cadence, best=self.widths[0])
        return self.phases[name]

    def choose(self, phase: str) -> int:
        """The width of the next run of `phase`."""
        return self.phase(phase).choose()

    def observe(self, phase: str, width: int, seconds: float, tokens: int = 1) -> None:
        """A run of `phase` at `width` took `seconds` for `tokens` tokens.  When it makes
        the phase switch, the machine changed: the other phases probe at their next run."""
        p = self.phase(phase)
        switches = p.switches
        p.observe(width, seconds, tokens)
        if p.switches != switches:
            for other in self.phases.values():
                if other is not p:
                    other.look_around()

    @contextlib.contextmanager
    def run(self, phase: str, tokens: int = 1) -> Iterator[int]:
        """`with policy.run("decode") as width:` run the token's pool calls at `width`; the
        time the block takes is observed when it ends (not when it raises)."""
        width = self.choose(phase)
        t0 = time.perf_counter()
        yield width
        self.observe(phase, width, time.perf_counter() - t0, tokens)

    def figures(self) -> dict:
        """Per phase run so far: `PhaseWidth.figures`, and whether the width adapts."""
        return {name: {"adaptive": self.adaptive, **p.figures()} for name, p in self.phases.items()}
