"""A rank's KV cache is resident only where it was written, as one rank's is: a tensor-parallel
SmolLM2 run of a few tokens holds well under a MiB of each rank's 120-240 MiB cache (numpy's
zeros would put the cache on huge pages, and each first touch of a layer would fault in 2 MiB
in the middle of a token)."""

import json

from cli_runner import ckec
from smollm2 import ROOT, needs_smollm2

pytestmark = needs_smollm2


def test_tensor_parallel_ranks_hold_only_the_kv_rows_they_wrote(tmp_path):
    report = tmp_path / "r.json"
    spec = ROOT / "specs" / "smollm2-tp.cke"
    r = ckec("run", spec, "--ids", "1,2,3", "-n", "2", "--report", report, "--no-predict")
    assert r.returncode == 0, r.stderr
    kv = {
        k: v["kv_cache"] for k, v in json.loads(report.read_text())["linux"]["huge_pages"].items()
    }
    assert set(kv) == {"0", "1"}
    for rank in kv.values():
        assert rank["bytes"] > 64 << 20
        assert rank["resident_bytes"] < 1 << 20
        assert rank["huge_page_bytes"] == 0
