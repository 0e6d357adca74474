import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # server: the subprocess helper
sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))  # smollm2: where the model is
