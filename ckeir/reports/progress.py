"""Progress of the slow steps (reading a model, compiling, loading weights) on stderr: a
spinner with the current step on a terminal, one line per step otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self._status = None
        self._t0 = time.perf_counter()

    def __enter__(self) -> Progress:
        if self.live:
            from rich.console import Console

            self._status = Console(file=self.stream).status("starting")
            self._status.start()
        return self

    def stage(self, name: str) -> None:
        if self._status is not None:
            self._status.update(f"{name}…")
        else:
            print(f"[{time.perf_counter() - self._t0:6.2f}s] {name}", file=self.stream)

    def done(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        print(f"ready in {time.perf_counter() - self._t0:.2f}s", file=self.stream)

    def __exit__(self, *exc) -> None:
        if self._status is not None:
            self._status.stop()
