import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # cli_runner: how tests run ckec
