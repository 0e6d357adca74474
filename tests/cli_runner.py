"""Run `ckec` as a user does: a subprocess of this Python, output captured, bounded in time."""

import os
import subprocess
import sys


def ckec(*args, cwd=None, timeout=600, env=None):
    environ = dict(os.environ, **env) if env else None
    return subprocess.run(
        [sys.executable, "-m", "ckeir.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=environ,
    )
