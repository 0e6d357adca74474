"""SmolLM2-135M on several local ranks — pipeline, tensor parallel, hybrid and planner-chosen
placements — gives the greedy continuation of the single-rank run."""

import json

import pytest
from cli_runner import ckec
from smollm2 import ROOT, needs_smollm2

pytestmark = [needs_smollm2, pytest.mark.slow]
EXPECTED = "28,260,2240,282,23324,27108,436,253,15114,39228"


@pytest.mark.parametrize("kind", ["pipeline", "tp", "hybrid", "auto"])
def test_placements_agree(kind, tmp_path):
    spec = ROOT / "specs" / f"smollm2-{kind}.cke"
    r = ckec("run", spec, "--ids", "6403,1980,253,655", "-n", "10", timeout=900)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == EXPECTED


def test_uneven_nodes_get_uneven_shards(tmp_path):
    """n0 has twice n1's bandwidth: it gets two of the three key/value heads in decode and
    two thirds of the FFN (in 32-wide blocks)."""
    out = tmp_path / "plan.json"
    r = ckec("plan", ROOT / "specs/smollm2-tp.cke", "--json", out, timeout=300)
    assert r.returncode == 0, r.stderr
    stage = json.loads(out.read_text())["phases"]["decode"]["stages"][0]
    assert stage["kv_heads"] == [[0, 2], [2, 3]]
    assert stage["ffn"] == [[0, 1024], [1024, 1536]]
