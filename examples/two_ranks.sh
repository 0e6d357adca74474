#!/usr/bin/env bash
# Two ranks on one machine: the planner's view of examples/two_ranks.cke, then a run on two
# local ranks (one process per node, shared memory between them) with its evidence report.
#
#     examples/two_ranks.sh [DIR]      # DIR keeps plan.json and report.json (default: a temp dir)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
spec="$here/two_ranks.cke"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"

echo "== ckec plan: who owns which layers, what crosses ranks, predicted times"
ckec plan "$spec" --json "$out/plan.json"

echo "== ckec run on 2 local ranks"
ckec run "$spec" --ids 1,2,3 -n 16 --report "$out/report.json"

echo "== from the report ($out/report.json)"
python - "$out/report.json" <<'PY'
import json, sys

r = json.load(open(sys.argv[1]))
d = r["decode"]
print(f"launch: {r['launch']}")
print(
    f"decode: {d['seconds_per_token'] * 1e3:.3f} ms/token measured, "
    f"{d['predicted_seconds_per_token'] * 1e3:.3f} ms/token predicted"
)
for rank, f in sorted(r["ranks"].items()):
    print(
        f"rank {rank} on {f['node']}: busy {f['busy_seconds'] * 1e3:.2f} ms, "
        f"waiting {f['waiting_seconds'] * 1e3:.2f} ms, "
        f"sent {f['bytes_sent']} B, received {f['bytes_received']} B"
    )
for h in r["hops"]:
    print(f"hop {h['from']} -> {h['to']}: {h['messages']} messages of {h['mean_bytes']:.0f} B")
PY
