"""The passes after shape-infer need every value typed: given unranked IR they say so, at the
first unranked value, instead of failing inside (insert-collectives asked an unranked type
for its byte size; plan-memory left the value without a buffer)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import ckec

TINY = Path(__file__).resolve().parents[2] / "specs" / "tiny.cke"

UNRANKED = """\
"builtin.module"() ({
  "cke.func"() ({
  ^bb0(%ids: tensor<1xi32>, %pos: i64, %k: memref<1x8x16xf32>, %v: memref<1x8x16xf32>):
    %t = "cke.weight"() {name = "t", shape = array<i64: 64, 16>} : () -> tensor<64x16xf32>
    %x = "cke.embed"(%ids, %t) : (tensor<1xi32>, tensor<64x16xf32>) -> tensor<*xf32>
    %y = "cke.matmul"(%x, %t) {tp = "partial"} : (tensor<*xf32>, tensor<64x16xf32>) -> tensor<*xf32>
    "cke.return"(%y) : (tensor<*xf32>) -> ()
  }) {group = array<i64: 0, 1>, phase = "decode", rank = 0 : i64, sym_name = "decode_r0"} : () -> ()
}) : () -> ()
"""


@pytest.mark.parametrize("name", ["insert-collectives", "plan-memory"])
def test_unranked_values_are_refused_where_they_are(tmp_path, name):
    path = tmp_path / "in.mlir"
    path.write_text(UNRANKED)
    r = ckec("opt", path, f"--pass-pipeline={name}", "--spec", TINY)
    assert r.returncode == 1, r.stderr
    assert f"in.mlir:5:10: error: {name}: the result of cke.embed is unranked" in r.stderr
    assert "(run shape-infer first)" in r.stderr
