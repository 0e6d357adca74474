"""Weights in memory: random weights are refused before allocation when this machine cannot
hold them (a spec within every limit can still describe a model of terabytes); a model
file's weights go on huge pages unless turned off or the copy would not fit, as smaps shows."""

import pytest
from needs import needs_thp
from smollm2 import SPEC, needs_smollm2

import ckeir
from ckeir.errors import CkeError
from ckeir.models.llama import LlamaConfig
from ckeir.runtime import memory, weights
from ckeir.runtime.memory import ENV_SWITCH, HUGE_PAGE, huge_pages_report
from ckeir.runtime.weights import available_memory, random_weights, random_weights_bytes

HUGE = LlamaConfig(
    vocab=1 << 24, hidden=1 << 17, layers=2, heads=4, kv_heads=4, ffn=128, context=64
)


def test_weights_larger_than_memory_are_refused_before_allocation():
    need = random_weights_bytes(HUGE)
    assert need > 2**44  # 16 TiB: more than any machine this runs on
    with pytest.raises(CkeError, match=r"random weights for this model need [\d,.]+ GiB"):
        random_weights(HUGE, seed=1)


def test_small_weights_are_made():
    cfg = LlamaConfig(vocab=64, hidden=32, layers=1, heads=2, kv_heads=2, ffn=64, context=16)
    w = random_weights(cfg, seed=1)
    assert sum(a.nbytes for a in w.values()) <= random_weights_bytes(cfg)
    assert available_memory() is None or available_memory() > 0


# ---- SmolLM2's weights on huge pages ------------------------------------------------------

PROMPT = [6403, 1980, 253, 655]  # "Once upon a time"


def weight_report(prog) -> dict:
    """The run's weights as the kernel holds them (smaps, mincore) after generating."""
    return huge_pages_report(prog.memory_regions())["weights"]


def mapped_file_bytes(prog) -> int:
    """Bytes of the model file this process has mapped in (smaps `Rss` of the file's map)."""
    m = prog.job.model_file._bytes()
    return sum(
        fields.get("Rss", 0)
        for lo, _, fields in memory._smaps()
        if m.ctypes.data <= lo < m.ctypes.data + m.nbytes
    )


@pytest.fixture(scope="module")
def default_run():
    with ckeir.compile(SPEC) as prog:
        ids = prog.generate(PROMPT, max_new_tokens=6)
        yield ids, prog.weight_placement, weight_report(prog), mapped_file_bytes(prog)


@needs_smollm2
@needs_thp
def test_weights_are_on_huge_pages_by_default(default_run):
    _, placement, report, _ = default_run
    assert placement["where"] == "copy"
    assert report["bytes"] == placement["nbytes"] > 90 * 2**20
    # every whole 2 MiB of the copy: all but the last partial huge page
    assert report["huge_page_bytes"] > report["bytes"] - HUGE_PAGE


@needs_smollm2
def test_copied_weights_are_resident_once(default_run):
    """Once copied, a tensor's file pages are unmapped: the process holds the weights once
    (the page cache keeps the file, shared and reclaimable); the header stays mapped."""
    _, placement, report, mapped = default_run
    assert report["resident_bytes"] == placement["nbytes"]
    assert mapped < 4 * 2**20 < placement["nbytes"]


@needs_smollm2
@pytest.mark.parametrize("how", ["option", "environment"])
def test_opting_out_keeps_the_mapping_off_huge_pages_and_the_ids(default_run, how, monkeypatch):
    options = {}
    if how == "option":
        options["huge_pages"] = False
    else:
        monkeypatch.setenv(ENV_SWITCH, "0")
    with ckeir.compile(SPEC, **options) as prog:
        ids = prog.generate(PROMPT, max_new_tokens=6)
        placement, report = prog.weight_placement, weight_report(prog)
    assert ids == default_run[0]
    assert placement["where"] == "map" and not placement["huge_pages"]
    assert report["huge_page_bytes"] == 0 and report["resident_bytes"] > 0


@needs_smollm2
def test_a_copy_that_would_not_fit_keeps_the_mapping_and_says_why(default_run, monkeypatch, capfd):
    monkeypatch.setattr(weights, "available_memory", lambda: 150 * 2**20)
    with ckeir.compile(SPEC) as prog:
        ids = prog.generate(PROMPT, max_new_tokens=6)
        placement, report = prog.weight_placement, weight_report(prog)
    assert ids == default_run[0]
    assert placement["where"] == "map" and placement["huge_pages"]
    assert "150 MiB this machine has available" in placement["reason"]
    assert f"warning: {placement['reason']}" in capfd.readouterr().err
    # the weights are the file's pages: no anonymous copy was made
    m = prog.job.model_file._bytes()
    assert (
        m.ctypes.data <= prog.weights["blk.0.ffn_up.weight"].ctypes.data < m.ctypes.data + m.nbytes
    )
    assert report["bytes"] == placement["nbytes"]
