"""Shrink a failing case to a small input that fails the same way (line-wise delta debugging).

Only the case's main text file shrinks (the spec or the IR); a model file is binary and stays
as it is.  Every try runs in the pool like any case, so a try that hangs or crashes costs its
timeout and no more.
"""

from __future__ import annotations

import attrs

from .harness import Case, Outcome, Pool

MAIN_FILE = {"spec": "case.cke", "ir": "in.mlir"}


def shrink(pool: Pool, outcome: Outcome, budget: int = 150) -> Outcome:
    """The smallest variant of `outcome.case` found within `budget` runs whose outcome has
    the same signature (the outcome itself when nothing smaller fails that way)."""
    name = MAIN_FILE.get(outcome.case.kind)
    if name is None or name not in outcome.case.files:
        return outcome
    want = outcome.signature
    lines = outcome.case.files[name].splitlines(keepends=True)
    best = outcome
    chunk = max(len(lines) // 2, 1)
    runs = 0
    while chunk >= 1 and runs < budget:
        shrunk = False
        start = 0
        while start < len(lines) and runs < budget:
            trial = lines[:start] + lines[start + chunk :]
            runs += 1
            got = _run(pool, best.case, name, b"".join(trial))
            if got.signature == want:
                lines, best, shrunk = trial, got, True
            else:
                start += chunk
        if not shrunk:
            chunk //= 2
    return best


def _run(pool: Pool, case: Case, name: str, data: bytes) -> Outcome:
    files = dict(case.files, **{name: data})
    name = case.name if case.name.endswith("(shrunk)") else case.name + " (shrunk)"
    trial = attrs.evolve(case, files=files, name=name)
    [(_, outcome)] = list(pool.run([trial]))
    return outcome
