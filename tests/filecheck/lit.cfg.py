# lit configuration for the pass golden tests: each .mlir file states its RUN line (ckec opt
# with a pipeline) and the IR it expects (filecheck CHECK lines).
import os
import shlex
import sys

import lit.formats

config.name = "ckeir-passes"
config.test_format = lit.formats.ShTest()
config.suffixes = [".mlir"]
config.test_source_root = os.path.dirname(__file__)
bindir = os.path.dirname(sys.executable)
config.environment["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from cli_runner import command  # noqa: E402  (the one way tests start ckec)

config.substitutions.append(("%ckec", shlex.join(command())))
for var in ("CKEIR_CACHE_DIR", "HOME"):
    if var in os.environ:
        config.environment[var] = os.environ[var]
config.excludes = ["Inputs"]
