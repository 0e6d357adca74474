"""A sliding-window layer's KV cache is a ring of W + T - 1 rows (plan-memory's `kv_rows`),
not the whole context: the engines allocate fewer bytes, and the run computes what a whole
cache computes, bit for bit, once positions wrap around the ring many times.

`specs/gemma3-tiny.cke` with a context of 512 and a window of 16; the prefill chunk (T) is
made 8 so that the rings hold 23 rows and a 40-id prompt and 30 decode steps (positions to
70, past 4 windows) wrap them three times (a window of 4: rings of 11 rows, six times).  The whole cache to compare with is the same
spec compiled with `cost.kv_ring_rows` giving every layer its context."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from cli_runner import ckec

import ckeir
from ckeir import driver
from ckeir.errors import CkeError
from ckeir.ir.verifier import verify
from ckeir.models import transformer
from ckeir.planner import cost
from ckeir.runtime.memory import resident_bytes

SPECS = Path(__file__).parents[2] / "specs"
PROMPT = [int(i * 37 % 500) for i in range(40)]
KVD = 24  # gemma3-tiny: 1 KV head of 24


def tiny_spec(tmp_path, context=512, batch=1, name="gemma3-tiny.cke") -> Path:
    text = (SPECS / "gemma3-tiny.cke").read_text()
    text = text.replace("context    128", f"context    {context}")
    if batch > 1:
        text = text.replace("  quantize weights", f"  batch {batch}\n  quantize weights")
    (tmp_path / "gemma3-tiny.cke").write_text(text)
    path = tmp_path / name
    if name != "gemma3-tiny.cke":
        path.write_text((SPECS / name).read_text())
    return path


def use_window(monkeypatch, window: int, chunk: int = 8) -> None:
    """gemma3 specs get this window and prefill calls of `chunk` rows."""
    monkeypatch.setattr(driver, "PREFILL_CHUNK", chunk)
    monkeypatch.setattr(
        driver, "config_from_decl", functools.partial(transformer.config_from_decl, window=window)
    )


@pytest.fixture
def small_rings(monkeypatch):
    """Window 16 and prefill calls of 8 rows: rings of 23 rows."""
    use_window(monkeypatch, 16)


def whole_cache(monkeypatch) -> None:
    """Programs compiled from here on keep every layer's whole context (no ring)."""
    monkeypatch.setattr(cost, "kv_ring_rows", lambda window, context, rows: context)


def steps(engine, prompt, n_new):
    """(token, logits) of the prompt's last prefill call and of each decode step after it."""
    pos, out = 0, []
    for i in range(0, len(prompt), engine.max_prefill):
        chunk = np.array(prompt[i : i + engine.max_prefill], np.int32)
        token, logits = engine.prefill(chunk, pos)
        pos += len(chunk)
    out.append((token, logits.copy()))
    for _ in range(n_new):
        token, logits = engine.decode(token, pos)
        pos += 1
        out.append((token, logits.copy()))
    return out


def kv_bytes(prog) -> int:
    return sum(r.length for r in prog.engine.memory_regions() if r.name == "kv_cache")


@pytest.mark.parametrize("window", [16, 4])  # rings of 23 rows, and of 11 (< a step's 16 keys)
def test_rings_give_the_whole_caches_bits_past_the_window(tmp_path, monkeypatch, window):
    use_window(monkeypatch, window)
    ring_rows = window + 8 - 1
    spec = tiny_spec(tmp_path)
    with ckeir.compile(spec, threads=2) as ring:
        # 6 sliding layers, 1 global
        assert ring.engine.kcache.shape == (6 * ring_rows + 512, KVD)
        got = steps(ring.engine, PROMPT, 30)
        ref = ckeir.compile(spec, backend="reference")
        assert ref.engine.kcache.shape == (6 * ring_rows + 512, KVD)
        ref_ids = [t for t, _ in steps(ref.engine, PROMPT, 30)]
    whole_cache(monkeypatch)
    with ckeir.compile(spec, threads=2) as whole:
        assert whole.engine.kcache.shape == (7, 512, KVD)
        want = steps(whole.engine, PROMPT, 30)
    assert [t for t, _ in got] == [t for t, _ in want] == ref_ids
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert np.array_equal(a, b)  # the same keys in the same order: the same bits


def test_the_kv_cache_held_at_a_long_context_is_the_rings(tmp_path):
    """Context 4096, window 32 (the spec's), prefill calls of 256: six rings of 287 rows and
    one global layer of 4096, against 7 x 4096; after a 300-id prompt and 40 steps every
    ring has wrapped, and what is resident of the cache stays within the rings."""
    spec = tiny_spec(tmp_path, context=4096)
    rows = 6 * (32 + 256 - 1) + 4096
    with ckeir.compile(spec, threads=2) as prog:
        assert kv_bytes(prog) == 2 * rows * KVD * 4
        prompt = [int(i * 53 % 500) for i in range(300)]
        prog.generate(prompt, max_new_tokens=40)
        held = [r for r in prog.engine.memory_regions() if r.name == "kv_cache"]
        resident = sum(resident_bytes(r.address, r.length) for r in held)
        assert resident <= 2 * rows * KVD * 4
    assert 2 * rows * KVD * 4 < 2 * 7 * 4096 * KVD * 4 / 4  # under a quarter of the whole


def test_the_run_report_holds_the_rings(tmp_path):
    """`ckec run --report` at context 4096: the KV cache the rank holds (linux.huge_pages)
    is the rings' and the global layer's rows, not 7 x 4096."""
    spec = tiny_spec(tmp_path, context=4096)
    report = tmp_path / "run.json"
    done = ckec("run", spec, "--ids", "1,2,3", "-n", "4", "--report", report, "--no-predict")
    assert done.returncode == 0, done.stderr
    held = json.loads(report.read_text())["linux"]["huge_pages"]["0"]["kv_cache"]
    assert held["bytes"] == 2 * (6 * 287 + 4096) * KVD * 4
    assert held["resident_bytes"] <= held["bytes"]


def test_batched_slots_in_rings_give_each_prompts_whole_cache_ids(
    tmp_path, small_rings, monkeypatch
):
    prompts = [PROMPT, PROMPT[:29][::-1]]
    spec = tiny_spec(tmp_path, batch=2)
    with ckeir.compile(spec, threads=2) as ring:
        assert ring.lowered.programs["decode"].cache_shape == (2, 6 * 23 + 512, KVD)
        got = ring.generate_many(prompts, max_new_tokens=30)
    ref = ckeir.compile(spec, backend="reference")
    assert ref.slot_engine().kcache.shape == (2, 6 * 23 + 512, KVD)
    ref_ids = ref.generate_many(prompts, max_new_tokens=30)
    whole_cache(monkeypatch)
    with ckeir.compile(tiny_spec(tmp_path), threads=2) as whole:
        want = [whole.generate(p, max_new_tokens=30) for p in prompts]
    assert got == want == ref_ids


@pytest.mark.slow
def test_a_pipeline_of_local_ranks_with_rings_gives_one_ranks_ids(tmp_path):
    """specs/gemma3-tiny-pipeline.cke at context 512: rings of 287 rows on both stages, a
    300-id prompt (two prefill calls) and decode past row 287."""
    from ckeir.ranks import run_local

    prompt = [int(i * 53 % 500) for i in range(300)]
    one_spec = tiny_spec(tmp_path)
    with ckeir.compile(one_spec, threads=1) as one:
        want = one.generate(prompt, max_new_tokens=12)
    spec = tiny_spec(tmp_path, name="gemma3-tiny-pipeline.cke")
    with ckeir.compile(spec, schedule="pipeline") as two:
        rows = {f.attr("rank"): f.attr("kv_rows") for f in _funcs(two.module)}
        assert rows == {0: 4 * 287, 1: 2 * 287 + 512}  # each rank packs its own layers
        run = run_local(two, prompt, 12)
    assert run["tokens"] == want


def _funcs(module):
    return [op for op in module.regions[0].entry.ops if op.name == "cke.func"]


def test_the_verifier_refuses_a_ring_too_small_for_a_call(tmp_path, small_rings):
    with ckeir.compile(tiny_spec(tmp_path), backend="reference") as prog:
        module = prog.module
    prefill = next(f for f in _funcs(module) if f.attr("phase") == "prefill")
    attn = next(op for op in prefill.regions[0].entry.ops if op.name == "cke.attention")
    attn.attributes["kv_rows"] = type(attn.attributes["kv_rows"])(22)  # 16 + 8 - 1 = 23
    with pytest.raises(CkeError, match="cannot hold a window of 16 keys and a call of 8"):
        verify(module)
    attn.attributes["kv_rows"] = type(attn.attributes["kv_rows"])(40)  # into layer 1's rows
    with pytest.raises(CkeError, match="overlap"):
        verify(module)


TWO_NODES = """import "gemma3-tiny.cke"
cluster pair {
  node n0 { cores 1; dram 8GiB; dram_bw 20GB/s; l2 1MiB; l3 32MiB }
  node n1 { like n0 }
  link n0 <-> n1 { bw 10Gbit/s; latency 50us }
}
schedule tensor {
  run gemma3tiny on pair
  quantize weights q8_0 except [token_embd]
  phase prefill { stage [n0, n1] layers 0..6 }
  phase decode  { stage [n0, n1] layers 0..6 }
}
schedule mixed {
  run gemma3tiny on pair
  quantize weights q8_0 except [token_embd]
  phase prefill { stage [n0, n1] layers 0..6 }
  phase decode  { stage n0 layers 0..3; stage n1 layers 4..6 }
}
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("schedule", "rows"),
    [("tensor", {6 * 287 + 512}), ("mixed", {6 * 287 + 512, 4 * 287, 2 * 287 + 512})],
)
def test_tensor_parallel_ranks_with_rings_give_one_ranks_ids(tmp_path, schedule, rows):
    """gemma3-tiny with 2 KV heads of 32 (one a rank) at context 512: tensor parallel ranks
    keep rings of 287 rows; prefill and decode placed apart keep rings too (the handoff
    copies each phase's ring rows); both give one rank's ids past row 287."""
    from ckeir.ranks import run_local

    spec = tiny_spec(tmp_path)
    text = spec.read_text().replace("hidden     96", "hidden     128")
    spec.write_text(text.replace("kv_heads   1", "kv_heads   2"))
    (tmp_path / "pair.cke").write_text(TWO_NODES)
    prompt = [int(i * 53 % 500) for i in range(300)]
    with ckeir.compile(spec, threads=1) as one:
        want = one.generate(prompt, max_new_tokens=12)
    with ckeir.compile(tmp_path / "pair.cke", schedule=schedule) as two:
        assert {f.attr("kv_rows") for f in _funcs(two.module)} == rows
        run = run_local(two, prompt, 12)
    assert run["tokens"] == want
