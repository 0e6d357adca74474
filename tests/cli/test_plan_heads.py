"""`ckec plan` names each rank's query heads beside its key/value heads: where a stage has
more nodes than key/value heads (Gemma 3's one), every node holds the key/value head and a
share of its query heads, which the key/value column alone cannot say."""

import json
from pathlib import Path

import ckeir
from tests.cli_runner import ckec

SPECS = Path(__file__).resolve().parents[2] / "specs"

TENSOR = """
cluster pair {
  node n0 { cores 1; dram 8GiB; dram_bw 20GB/s; l2 1MiB; l3 32MiB }
  node n1 { like n0 }
  link n0 <-> n1 { bw 10Gbit/s; latency 50us }
}

schedule tensor {
  run gemma3tiny on pair
  phase prefill { stage [n0, n1] layers 0..6 }
  phase decode  { stage [n0, n1] layers 0..6 }
}
"""


def test_plan_shows_each_ranks_query_heads(tmp_path):
    text = (SPECS / "gemma3-tiny.cke").read_text()
    model = text[: text.index("cluster one")].replace("hidden     96", "hidden     128")
    spec = tmp_path / "tp.cke"
    spec.write_text(model + TENSOR)
    out = tmp_path / "plan.json"
    done = ckec("plan", spec, "--json", out)
    assert done.returncode == 0, done.stderr
    (stage,) = json.loads(out.read_text())["phases"]["decode"]["stages"]
    assert stage["kv_heads"] == [[0, 1], [0, 1]]
    assert stage["heads"] == [[0, 2], [2, 4]]
    assert "q heads" in ckec("plan", spec, env={"COLUMNS": "200"}).stdout
    # the heads each rank's program computes: its rows of the query projection
    prog = ckeir.compile(spec, backend="reference")
    hd = prog.config.head_dim
    for rank, (h0, h1) in enumerate(stage["heads"]):
        (q,) = [
            op
            for op in prog.module.walk()
            if op.name == "cke.weight"
            and op.attr("name") == "blk.0.attn_q.weight"
            and op.parent.parent.parent.attr("rank") == rank
            and op.parent.parent.parent.attr("phase") == "decode"
        ]
        assert q.results[0].type.shape[0] == (h1 - h0) * hd
