"""Programs for `test_evidence.py`, run on local ranks (`launch_local`) and as a script under
mpiexec (`python -m mpi4py evidence_programs.py OUT_DIR`: each rank writes its result to
OUT_DIR/RANK.json)."""

from __future__ import annotations

import json
import os
import sys

# larger than one slot of the local transport, so the gathered bytes travel in chunks
PAYLOAD_BYTES = 3 * 1024 * 1024 + 5


def payload(rank: int) -> bytes:
    return bytes((rank + i) % 251 for i in range(256)) * (PAYLOAD_BYTES // 256) + b"x" * rank


def prog_gather_and_clock(t) -> dict:
    """Gather a large object from every rank on rank 0, then measure the clock offsets."""
    got = t.gather_object({"rank": t.rank, "payload": payload(t.rank)})
    clock = t.clock_offset()
    gathered = None
    if got is not None:
        gathered = [g["rank"] == r and g["payload"] == payload(r) for r, g in enumerate(got)]
    return {
        "gathered": gathered,
        "offset": clock.seconds,
        "round_trip": clock.round_trip_seconds,
    }


def main(out_dir: str) -> None:
    from ckeir.runtime.transport import transport_from_env

    t = transport_from_env()
    assert t is not None, "not launched by mpiexec with several ranks"
    result = prog_gather_and_clock(t)
    with open(os.path.join(out_dir, f"{t.rank}.json"), "w") as f:
        json.dump(result, f)
    t.close()


if __name__ == "__main__":
    main(sys.argv[1])
