import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # cli_runner: how tests run ckec

from needs import pytest_configure, pytest_runtest_setup  # noqa: E402, F401  (the `needs` hooks)
