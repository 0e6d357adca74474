"""Run `ckec` as a user does: a subprocess of this Python, output captured, bounded in time.

Every test that runs the CLI goes through here (tests/test_lint.py refuses any other way), so
how ckec is started — the interpreter, the module, the environment — is decided once.
"""

import os
import subprocess
import sys


def command(*args, mpi: bool = False) -> list[str]:
    """The command line of `ckec ARGS`.  With `mpi`, the line each rank runs under mpiexec:
    through `python -m mpi4py`, so a rank that raises aborts the whole job, not hangs it."""
    interpreter = [sys.executable, "-m", "mpi4py"] if mpi else [sys.executable]
    return [*interpreter, "-m", "ckeir.cli", *map(str, args)]


def _environment(env: dict | None) -> dict | None:
    """This process's environment with `env`'s variables set over it."""
    return dict(os.environ, **env) if env else None


def ckec(*args, cwd=None, timeout=600, env=None, stdin=None):
    """`ckec ARGS` run to completion: a CompletedProcess with text stdout and stderr."""
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=_environment(env),
        stdin=stdin,
    )


def start_ckec(*args, env=None, **popen) -> subprocess.Popen:
    """`ckec ARGS` started and left running, for a test that signals it or controls its
    streams (`popen`: stdout, stderr, text… as subprocess.Popen takes them)."""
    return subprocess.Popen(command(*args), env=_environment(env), **popen)
