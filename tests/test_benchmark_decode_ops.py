"""benchmarks/decode_ops.py, where a decode token's time goes op by op: on a small random-weight
model with F16 weights, its stamps come from the run — every op of the decode program is
counted as often as a token calls it, each took time, and the ops and the time outside the
entry make up the token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS, HIDDEN, KV, FFN, VOCAB = 2, 128, 64, 256, 512

SPEC = f"""
model small {{
  family     llama
  vocab      {VOCAB}
  hidden     {HIDDEN}
  layers     {LAYERS}
  heads      4
  kv_heads   2
  ffn        {FFN}
  norm_eps   1e-5
  rope_theta 10000
  context    64
  weights    random(seed = 3)
}}

cluster host {{
  node n0 {{ cores 2; dram 24GiB; dram_bw 20GB/s; l2 1MiB; l3 32MiB }}
}}

schedule serve {{
  run small on host
  quantize weights f16
}}
"""


def test_every_op_of_a_token_is_stamped(tmp_path):
    spec, out = tmp_path / "small.cke", tmp_path / "ops.json"
    spec.write_text(SPEC)
    env = dict(os.environ, CKEIR_CACHE_DIR=str(tmp_path / "cache"))
    args = [sys.executable, "-m", "benchmarks.decode_ops", str(spec), "--rounds", "2"]
    subprocess.run([*args, "--tokens", "3", "--json", str(out)], cwd=ROOT, env=env, check=True)
    (result,) = json.loads(out.read_text())["results"].values()
    kernels = result["kernels"]
    calls = {name: k["calls"] for name, k in kernels.items()}
    assert calls[f"matmul_f16_n{HIDDEN}_k{HIDDEN}"] == 2 * LAYERS  # q and o
    assert calls[f"matmul_f16_n{KV}_k{HIDDEN}"] == 2 * LAYERS  # k and v
    assert calls[f"matmul_f16_n{FFN}_k{HIDDEN}"] == 2 * LAYERS  # gate and up
    assert calls[f"matmul_f16_n{HIDDEN}_k{FFN}"] == LAYERS  # down
    assert calls[f"matmul_f16_n{VOCAB}_k{HIDDEN}"] == 1  # the LM head
    assert calls[f"qembed_f16_v{VOCAB}_d{HIDDEN}"] == 1
    assert sum(n for name, n in calls.items() if name.startswith("rmsnorm")) == 2 * LAYERS + 1
    assert all(k["work"] + k["work_t1"] > 0 for k in kernels.values()), kernels
    # the matmuls' bytes are their weights' (f16: 2 bytes a weight)
    assert kernels[f"matmul_f16_n{VOCAB}_k{HIDDEN}"]["bytes"] == 2 * VOCAB * HIDDEN
    inside = sum(k["work"] + k["wait"] for k in kernels.values())
    assert abs(inside - result["entry_seconds_per_token"]) < 1e-9
    token = result["seconds_per_token_best_round"]
    assert 0 < inside <= token
    assert abs(inside + result["outside_seconds_per_token"] - token) < 1e-9
