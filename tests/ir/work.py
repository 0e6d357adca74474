"""The work a piece of code does, counted rather than timed, for tests that observe how it
grows with its input (linear, not quadratic) on a machine of any speed or load:

- `lines`: lines of the watched modules executed (Python-level loops);
- `chars`: characters read through a `CountedText`'s own methods and through the watched
  modules' regular expressions (what C-level scans of a text cost: `text.count("\\n", 0,
  pos)` per op reads the text again for every op);
- `elements`: elements taken in by the sets the watched modules build (what C-level copies
  cost: `set(visible)` per block copies every visible value again for every block).

A quadratic path shows as a count that grows 16x when the input grows 4x, the same on every
run; `hang_guard` ends a test whose code never returns, without judging how long it took."""

from __future__ import annotations

import re
import signal
import sys
import threading
from contextlib import contextmanager

import attrs
import pytest


@attrs.define
class Work:
    lines: int = 0
    chars: int = 0
    elements: int = 0


def grows_linearly(small: Work, large: Work, factor: int, slack: float = 1.1) -> list[str]:
    """The counts of `large` (an input `factor` times `small`'s) beyond linear growth: a
    count a·n + c with c ≥ 0 grows at most `factor` times."""
    out = []
    for name in ("lines", "chars", "elements"):
        a, b = getattr(small, name), getattr(large, name)
        if b > factor * slack * max(a, 1):
            out.append(f"{name}: {a} -> {b} ({b / max(a, 1):.1f}x for {factor}x the input)")
    return out


class CountedText(str):
    """A str that counts, into `work.chars`, the characters its own methods read."""

    work: Work

    def __new__(cls, text: str, work: Work):
        obj = super().__new__(cls, text)
        obj.work = work
        return obj

    def _bounds(self, start, end) -> tuple[int, int]:
        lo, hi, _ = slice(start, end).indices(str.__len__(self))
        return lo, max(lo, hi)

    def _read(self, n: int) -> None:
        self.work.chars += n

    def startswith(self, prefix, start=None, end=None):
        lo, hi = self._bounds(start, end)
        longest = max(map(len, prefix)) if isinstance(prefix, tuple) else len(prefix)
        self._read(min(longest, hi - lo))
        return str.startswith(self, prefix, start, end)

    def endswith(self, suffix, start=None, end=None):
        lo, hi = self._bounds(start, end)
        longest = max(map(len, suffix)) if isinstance(suffix, tuple) else len(suffix)
        self._read(min(longest, hi - lo))
        return str.endswith(self, suffix, start, end)

    def find(self, sub, start=None, end=None):
        lo, hi = self._bounds(start, end)
        at = str.find(self, sub, start, end)
        self._read(at + len(sub) - lo if at >= 0 else hi - lo)  # up to the first match
        return at

    def rfind(self, sub, start=None, end=None):
        lo, hi = self._bounds(start, end)
        at = str.rfind(self, sub, start, end)
        self._read(hi - at if at >= 0 else hi - lo)  # back to the last match
        return at

    def index(self, sub, start=None, end=None):
        if (at := self.find(sub, start, end)) < 0:
            raise ValueError("substring not found")
        return at

    def rindex(self, sub, start=None, end=None):
        if (at := self.rfind(sub, start, end)) < 0:
            raise ValueError("substring not found")
        return at

    def count(self, sub, start=None, end=None):
        lo, hi = self._bounds(start, end)
        self._read(hi - lo)
        return str.count(self, sub, start, end)

    def __getitem__(self, key):
        got = str.__getitem__(self, key)
        self._read(len(got))
        return got


def _whole(name: str):
    method = getattr(str, name)

    def read_whole(self, *args, **kwargs):
        self._read(str.__len__(self))
        return method(self, *args, **kwargs)

    read_whole.__name__ = name
    return read_whole


# the methods that read the whole text, whatever their arguments
for _name in (
    "split", "rsplit", "splitlines", "partition", "rpartition", "strip", "lstrip", "rstrip",
    "replace", "encode", "lower", "upper", "casefold", "__contains__", "__iter__",
):  # fmt: skip
    setattr(CountedText, _name, _whole(_name))


class _CountedPattern:
    """A compiled regular expression that counts the characters its scans read."""

    def __init__(self, rx: re.Pattern, work: Work):
        self.rx, self.work = rx, work

    def __getattr__(self, name):
        return getattr(self.rx, name)

    def _anchored(self, how, string, pos=0, endpos=sys.maxsize):
        m = how(string, pos, endpos)
        self.work.chars += (m.end() - pos if m else 0) + 1  # what matched, or the refusal
        return m

    def match(self, *args):
        return self._anchored(self.rx.match, *args)

    def fullmatch(self, *args):
        return self._anchored(self.rx.fullmatch, *args)

    def search(self, string, pos=0, endpos=sys.maxsize):
        m = self.rx.search(string, pos, endpos)
        self.work.chars += (m.end() if m else min(len(string), endpos)) - pos
        return m

    def _whole(self, how, string, *args):
        self.work.chars += len(string)
        return how(string, *args)

    def finditer(self, string, *args):
        return self._whole(self.rx.finditer, string, *args)

    def findall(self, string, *args):
        return self._whole(self.rx.findall, string, *args)

    def split(self, string, *args):
        return self._whole(self.rx.split, string, *args)

    def sub(self, repl, string, *args):
        self.work.chars += len(string)
        return self.rx.sub(repl, string, *args)

    def subn(self, repl, string, *args):
        self.work.chars += len(string)
        return self.rx.subn(repl, string, *args)


def _re_function(name: str):
    """`re.NAME(pattern, string, ...)` through a counted compiled pattern."""

    def call(self, pattern, *args, **kwargs):
        return getattr(self.compile(pattern), name)(*args, **kwargs)

    call.__name__ = name
    return call


class _CountedRe:
    """The `re` module as a watched module sees it: every pattern it compiles, or uses
    through a module-level function, counts its scans."""

    def __init__(self, work: Work):
        self.work = work

    def __getattr__(self, name):
        return getattr(re, name)

    def compile(self, pattern, flags=0):
        return _CountedPattern(re.compile(pattern, flags), self.work)


for _name in ("match", "fullmatch", "search", "finditer", "findall", "split", "sub", "subn"):
    setattr(_CountedRe, _name, _re_function(_name))


def _sized(items):
    return items if isinstance(items, (set, frozenset, list, tuple, dict)) else list(items)


def _counted_set(work: Work) -> type:
    """`set` as a watched module sees it: the elements each set takes in are counted."""

    def taking(method):
        def take(self, *others):
            others = [_sized(o) for o in others]
            work.elements += sum(map(len, others))
            return method(self, *others)

        take.__name__ = method.__name__
        return take

    class CountedSet(set):
        def __init__(self, items=()):
            items = _sized(items)
            work.elements += len(items)
            super().__init__(items)

        def copy(self):
            work.elements += len(self)
            return set.copy(self)

    for name in (
        "update", "difference_update", "intersection_update", "symmetric_difference_update",
        "union", "difference", "intersection", "symmetric_difference",
        "__or__", "__and__", "__sub__", "__xor__", "__ior__", "__iand__", "__isub__", "__ixor__",
    ):  # fmt: skip
        setattr(CountedSet, name, taking(getattr(set, name)))
    return CountedSet


@contextmanager
def counting(*modules):
    """A `Work` counting what the code of `modules` does inside the block: the lines it
    executes, its regular expressions' scans, the elements its sets take in (each module's
    compiled patterns, `re` and `set` are replaced for the block)."""
    work = Work()
    files = {m.__file__ for m in modules}

    def each_line(frame, event, arg):
        if event == "line":
            work.lines += 1
        return each_line

    def calls(frame, event, arg):
        return each_line if frame.f_code.co_filename in files else None

    with pytest.MonkeyPatch.context() as mp:
        for m in modules:
            for name, value in list(vars(m).items()):
                if isinstance(value, re.Pattern):
                    mp.setattr(m, name, _CountedPattern(value, work))
            if vars(m).get("re") is re:
                mp.setattr(m, "re", _CountedRe(work))
            mp.setattr(m, "set", _counted_set(work), raising=False)
        before = sys.gettrace()
        sys.settrace(calls)
        try:
            yield work
        finally:
            sys.settrace(before)


@contextmanager
def hang_guard(seconds: float):
    """End the block with TimeoutError if it has not returned after `seconds`: a guard
    against a hang (a loop that never ends), far above any real run, never an assertion on
    time.  Only the main thread receives the alarm; elsewhere the block runs unguarded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def hung(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
