"""Random weights are refused before allocation when this machine cannot hold them: a spec
within every limit can still describe a model of terabytes."""

import pytest

from ckeir.errors import CkeError
from ckeir.models.llama import LlamaConfig
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
