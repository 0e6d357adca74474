"""SmolLM2-135M decoded with the pool's width changing token by token (`width.WidthPolicy`
chooses it per run): every kernel gives the same bits on 1 and 2 threads, so the ids and
logits are those of a run at a fixed width, whatever the policy does."""

import numpy as np
import pytest
from smollm2 import SPEC, needs_smollm2
from widths import Forced

import ckeir
from ckeir.backends.llvm.width import WidthPolicy

pytestmark = [needs_smollm2, pytest.mark.slow]

PROMPT = [6403, 1980, 253, 655]  # "Once upon a time", no BOS
N = 24


def test_ids_and_logits_are_the_same_bits_at_every_width():
    with ckeir.compile(SPEC, threads=2) as prog:
        runs = {}
        for name, policy in (
            ("fixed 2", WidthPolicy.fixed(2)),
            ("1", Forced([1])),
            ("2 1", Forced([2, 1])),
            ("1 1 2", Forced([1, 1, 2])),
        ):
            prog.engine.widths = policy
            logits: list[np.ndarray] = []
            keep = logits.append
            ids = list(prog.stream(PROMPT, N, on_logits=lambda i, x, keep=keep: keep(x.copy())))
            runs[name] = ids, logits
            assert sum(policy.figures()["decode"]["tokens"].values()) == N - 1
        ids, logits = runs.pop("fixed 2")
        for name, (other_ids, other_logits) in runs.items():
            assert other_ids == ids, name
            assert all(np.array_equal(a, b) for a, b in zip(other_logits, logits, strict=True))
