"""benchmarks/agree.py, the ids column of benchmarks/types.py: two engines run on the same
ids (the second's greedy path), each step's logits compared, and the first step where the
argmaxes part named a near-tie or a real difference.  The engines are ckeir's native programs
of specs/gemma3-tiny.cke with 8-bit and with float activations (logits apart by rounding, as
ckeir's and llama.cpp's are), the second with one logit moved at one step as a model error
would move it: by a hair over the best, a tie; by several logits, DIFFERS."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import ckeir
from ckeir.runtime.generate import generate_stream

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ is beside the package, not installed with it
from benchmarks import agree  # noqa: E402

SPEC = ROOT / "specs" / "gemma3-tiny.cke"
PROMPT = [2, 17, 301, 44, 9, 250, 128, 77]
STEPS = 10


class Recorded:
    """An engine's calls passed through: the ids each decode step was fed, and at step
    `at` (0: the prefill's row) the logit of the row's `rank`-th best token set `by` above
    the best, so that this engine's argmax there is that token."""

    def __init__(self, engine, at=None, rank=1, by=0.0):
        self.engine, self.at, self.rank, self.by = engine, at, rank, by
        self.fed: list[int] = []
        self.step = 0
        self.max_prefill, self.context = engine.max_prefill, engine.context

    def _moved(self, token, logits):
        step, self.step = self.step, self.step + 1
        if step != self.at:
            return token, logits
        logits = np.array(logits, np.float32).reshape(-1)
        order = np.argsort(-logits, kind="stable")
        logits[order[self.rank]] = logits[order[0]] + self.by
        return int(order[self.rank]), logits[None, :]

    def prefill(self, ids, pos):
        self.step = 0
        return self._moved(*self.engine.prefill(ids, pos))

    def decode(self, token, pos):
        self.fed.append(int(token))
        return self._moved(*self.engine.decode(token, pos))

    def reset(self):
        self.fed, self.step = [], 0
        self.engine.reset()


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """The tiny spec natively with 8-bit activations, and with float activations."""
    floats = agree.float_spec(SPEC, tmp_path_factory.mktemp("agree"))
    with ckeir.compile(SPEC, threads=1) as a, ckeir.compile(floats, threads=1) as b:
        yield a, b


def free(engine, vocab: int) -> list[int]:
    return list(generate_stream(engine, PROMPT, STEPS, vocab))


def test_both_engines_are_fed_the_second_ones_ids(programs):
    a, b = programs
    ours, ref = Recorded(a.engine), Recorded(b.engine, at=3, rank=1, by=2.0)
    steps = agree.agreement(ours, ref, PROMPT, STEPS)
    # the second engine's argmax at each step is the id both were fed next
    assert ours.fed == ref.fed == [s.ref for s in steps[:-1]]
    assert len(steps) == STEPS and len(ours.fed) == STEPS - 1
    # where nothing was moved the two differ by their activations' rounding alone
    scale = max(abs(v) for s in steps for _, v in s.top_ref)
    assert all(s.same and 0 < s.max_diff < 0.02 * scale for s in steps[:3])
    assert not steps[3].same and steps[3].ref == ref.fed[3]


@pytest.mark.parametrize(("by", "verdict"), [(1e-3, "tie"), (4.0, "DIFFERS")])
def test_the_first_difference_is_where_free_running_ids_part(programs, by, verdict):
    """The agreeing prefix is the free-running greedy ids' common prefix; a logit moved
    by a hair over the best reads as a near-tie, one moved by several logits does not."""
    a, b = programs
    vocab = a.config.vocab
    ours, ref = Recorded(a.engine), Recorded(b.engine, at=4, rank=1, by=by)
    steps = agree.agreement(ours, ref, PROMPT, STEPS)
    mine, theirs = free(a.engine, vocab), free(ref, vocab)
    part = next(i for i, (x, y) in enumerate(zip(mine, theirs, strict=True)) if x != y)
    assert part == agree.prefix(steps) == 4
    s = steps[4]
    # the margin is the second engine's preference for its id over the first's, from its row
    assert (s.ours, s.ref) == (mine[4], theirs[4])
    assert s.margin == pytest.approx(by, abs=1e-4)
    assert agree.summary(steps).startswith(f"4/{STEPS} ({verdict}: gap {s.margin:.2g}, Δ")
    # fed the same ids again, the two agree at every other step
    assert agree.summary(steps).endswith(f"; forced {STEPS - 1}/{STEPS})") == (verdict == "tie")


def test_an_arbiter_names_the_id_it_prefers(programs, tmp_path):
    """A third engine on the same path (the float computation, unmoved): at the step where
    the second engine's logit was moved, it sides with the first engine's id."""
    a, b = programs
    ours, ref = Recorded(a.engine), Recorded(b.engine, at=4, rank=1, by=4.0)
    with ckeir.compile(agree.float_spec(SPEC, tmp_path), threads=1) as c:
        judge = Recorded(c.engine)
        steps = agree.agreement(ours, ref, PROMPT, STEPS, arbiter=judge)
    assert ours.fed == judge.fed == ref.fed  # the arbiter is fed the same ids
    s = steps[4]
    assert s.arbiter > 0 and all(x.arbiter is not None for x in steps)
    assert "float64 sides with ckeir by" in agree.summary(steps)


def test_engines_that_agree_throughout_read_n_of_n(programs):
    a, b = programs
    steps = agree.agreement(a.engine, b.engine, PROMPT, STEPS)
    assert agree.summary(steps) == f"{STEPS}/{STEPS}"
