"""Sampling: the ids a run draws.  Temperature 0 (and top_k 1) is exactly `generate`'s greedy
choice; a seed fixes the draws on the one-sequence loop and on the scheduler's slots alike;
every drawn id is one truncation keeps; penalties move what they should; bad options are
refused by name before any work."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from widths import TWO_CORES_SPEC

import ckeir
from ckeir.errors import CkeError
from ckeir.runtime.sampling import Sampling, penalize, truncate

PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]


@pytest.fixture(scope="module")
def prog(tmp_path_factory):
    path = tmp_path_factory.mktemp("sampling") / "m.cke"
    path.write_text(TWO_CORES_SPEC)
    with ckeir.compile(path, threads=2) as p:
        yield p


def test_temperature_zero_is_generate(prog):
    greedy = prog.generate(PROMPT, 12)
    assert prog.generate(PROMPT, 12, temperature=0, seed=5, top_k=3, top_p=0.5) == greedy
    assert prog.generate(PROMPT, 12, temperature=1.5, top_k=1, seed=9) == greedy
    assert prog.generate_many([PROMPT], 12, temperature=0.0) == [greedy]


def test_same_seed_same_ids_on_every_way_in(prog):
    options = dict(temperature=1.2, top_p=0.95, seed=1234)
    drawn = prog.generate(PROMPT, 16, **options)
    assert drawn != prog.generate(PROMPT, 16)  # it did sample
    assert prog.generate(PROMPT, 16, **options) == drawn
    assert list(prog.stream(PROMPT, 16, **options)) == drawn
    # through the scheduler: each prompt its own random state, seeded alike
    for slots in (1, 3):
        got = prog.generate_many([PROMPT, [7, 7], PROMPT], 16, slots=slots, **options)
        assert got[0] == got[2] == drawn
        assert got[1] == prog.generate([7, 7], 16, **options)


def test_another_seed_draws_other_ids(prog):
    runs = {tuple(prog.generate(PROMPT, 16, temperature=1.5, seed=s)) for s in range(4)}
    assert len(runs) > 1


def test_unseeded_runs_differ(prog):
    runs = {tuple(prog.generate(PROMPT, 16, temperature=2.0)) for _ in range(3)}
    assert len(runs) > 1


def test_drawn_ids_stay_in_the_top_k(prog):
    rows = []
    drawn = list(
        prog.stream(
            PROMPT, 12, on_logits=lambda i, x: rows.append(x.copy()), temperature=3.0, top_k=3
        )
    )
    assert len(rows) == len(drawn) == 12
    for token, row in zip(drawn, rows, strict=True):
        assert token in np.argsort(-row)[:3]
    assert any(t != int(np.argmax(r)) for t, r in zip(drawn, rows, strict=True))


def test_repeat_and_presence_penalties_stop_repeats(prog):
    for options in (dict(repeat_penalty=50.0), dict(presence_penalty=100.0)):
        ids = prog.generate(PROMPT, 20, repeat_last_n=-1, **options)
        assert not set(ids) & set(PROMPT)
        assert len(set(ids)) == len(ids)
    plain = prog.generate(PROMPT, 20)
    assert len(set(plain)) < len(plain) or set(plain) & set(PROMPT)  # a repeat to remove


@pytest.mark.parametrize(
    "options, words",
    [
        (dict(temperature=-0.1), "temperature must be between 0 and 100"),
        (dict(temperature="hot"), "temperature is a number"),
        (dict(top_k=-1), "top_k must be between 0"),
        (dict(top_k=2.5), "top_k is an integer"),
        (dict(top_p=0), "top_p must be above 0"),
        (dict(min_p=1.5), "min_p must be between 0 and 1"),
        (dict(seed=-3), "seed must be between 0"),
        (dict(repeat_penalty=0), "repeat_penalty must be positive"),
        (dict(presence_penalty=float("nan")), "presence_penalty must be between"),
        (dict(temprature=1.0), "unknown sampling option 'temprature'"),
    ],
)
def test_bad_options_are_refused_by_name(prog, options, words):
    with pytest.raises(CkeError, match=words):
        prog.generate(PROMPT, 4, **options)
    with pytest.raises(CkeError, match=words):
        prog.generate_many([PROMPT], 4, **options)


LOGITS = st.lists(st.floats(-30, 30, allow_nan=False, width=32), min_size=2, max_size=64).map(
    lambda v: np.array(v, np.float32)
)


@settings(max_examples=200, deadline=None)
@given(LOGITS, st.integers(0, 2**32), st.floats(0.05, 5.0))
def test_top_k_one_is_the_argmax(x, seed, temperature):
    s = Sampling.of(temperature=temperature, top_k=1, seed=seed).sampler()
    assert s.choose(x, []) == int(np.argmax(x))


def sorted_truncation(x, top_k, top_p, min_p):
    """truncate's definition: every id sorted, likeliest first (ties by id), then top_k, the
    smallest prefix reaching top_p, the ids at least min_p of the likeliest; probabilities
    over the top_k ids, or over the whole vocabulary."""
    order = np.argsort(-x, kind="stable")
    topk = 0 < top_k < len(x)
    if topk:
        order = order[:top_k]
    p = np.exp(x[order] - x[order[0]])
    p /= p.sum() if topk else np.exp(x - x.max()).sum()
    keep = len(order)
    if top_p < 1.0:
        keep = min(keep, int(np.searchsorted(np.cumsum(p), top_p, side="left")) + 1)
    if min_p > 0.0:
        keep = min(keep, max(1, int(np.count_nonzero(p[:keep] >= min_p * p[0]))))
    return np.sort(order[:keep])


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 3000),
    st.integers(0, 5),
    st.integers(0, 2**32 - 1),
    st.integers(0, 300),
    st.sampled_from([1.0, 0.999, 0.95, 0.5, 0.01]),
    st.sampled_from([0.0, 1e-4, 0.05, 0.5]),
)
def test_truncation_sorts_only_what_it_keeps_and_keeps_what_a_full_sort_keeps(
    n, levels, seed, top_k, top_p, min_p
):
    rng = np.random.default_rng(seed)
    # few distinct values (levels > 0) make ties at every cut
    x = rng.integers(0, levels, n) * 1.5 if levels else rng.standard_normal(n) * 3
    got = truncate(x.astype(np.float64), top_k, top_p, min_p)
    assert got.tolist() == sorted_truncation(x.astype(np.float64), top_k, top_p, min_p).tolist()


@settings(max_examples=200, deadline=None)
@given(
    LOGITS,
    st.integers(0, 70),
    st.floats(0.01, 1.0),
    st.floats(0.0, 1.0),
    st.integers(0, 2**32),
)
def test_draws_come_from_the_truncated_support(x, top_k, top_p, min_p, seed):
    kept = truncate(x.astype(np.float64), top_k, top_p, min_p)
    assert int(np.argmax(x)) in kept
    if top_k:
        assert len(kept) <= top_k
    p = np.exp(x.astype(np.float64) - x.max())
    p /= p.sum()
    # min_p: nothing kept below min_p times the likeliest
    assert np.all(p[kept] >= min_p * p.max() - 1e-12)
    # top_p: without the least likely kept id, the kept mass falls short of top_p
    if top_k == 0 and min_p == 0 and len(kept) > 1:
        assert p[kept].sum() - p[kept].min() < top_p + 1e-9
    s = Sampling.of(temperature=1.0, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed).sampler()
    for _ in range(5):
        assert s.choose(x, []) in kept


@settings(max_examples=100, deadline=None)
@given(LOGITS, st.lists(st.integers(0, 63), max_size=30), st.floats(1.0, 5.0))
def test_penalties_lower_seen_ids_only(x, history, penalty):
    x = x.astype(np.float64)
    out = x.copy()
    o = Sampling.of(repeat_penalty=penalty, presence_penalty=0.5, frequency_penalty=0.25)
    penalize(out, history, o)
    seen = {t for t in history[-64:] if t < len(x)}
    for i in range(len(x)):
        if i in seen:
            count = history[-64:].count(i)
            assert out[i] <= x[i] - 0.5 - 0.25 * count + 1e-9
        else:
            assert out[i] == x[i]


@pytest.mark.parametrize("backend", ["llvm", "reference"])
def test_same_seed_same_ids_on_the_batched_engine(tmp_path, backend):
    """`batch 3`: the batched decode program draws what the one-sequence loop draws."""
    path = tmp_path / "b.cke"
    path.write_text(
        TWO_CORES_SPEC.replace("quantize weights q8_0", "quantize weights q8_0; batch 3")
    )
    options = dict(temperature=1.1, top_k=40, min_p=0.02, repeat_penalty=1.3, seed=77)
    prompts = [PROMPT, [7, 7], [200, 100, 50], PROMPT]
    with ckeir.compile(path, backend=backend, threads=2) as p:
        alone = [p.generate(ids, 14, **options) for ids in prompts]
        assert alone != [p.generate(ids, 14) for ids in prompts]
        assert p.generate_many(prompts, 14, **options) == alone
        assert p.slot_engine().slots == 3
