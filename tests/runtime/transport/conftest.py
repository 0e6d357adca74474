"""The transport tests import their helpers by name: put this folder on sys.path (spawned
and MPI ranks import `transport_programs` too)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
