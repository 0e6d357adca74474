# lit configuration for the pass golden tests: each .mlir file states its RUN line (ckec opt
# with a pipeline) and the IR it expects (filecheck CHECK lines).
import os
import sys

import lit.formats

config.name = "ckeir-passes"
config.test_format = lit.formats.ShTest()
config.suffixes = [".mlir"]
config.test_source_root = os.path.dirname(__file__)
bindir = os.path.dirname(sys.executable)
config.environment["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
config.substitutions.append(("%ckec", f"{sys.executable} -m ckeir.cli"))
for var in ("CKEIR_CACHE_DIR", "HOME"):
    if var in os.environ:
        config.environment[var] = os.environ[var]
config.excludes = ["Inputs"]
