"""The transport-independent parts: shaped links, the ordered sum every allreduce uses, and
how the sliced allreduce cuts a buffer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ckeir.errors import TransportError
from ckeir.planner.cost import slices
from ckeir.runtime.transport import Link, LinkModel
from ckeir.runtime.transport.base import _ordered_sum

# wide exponents: the bits of a sum depend on the order of its additions
elements = st.floats(-(2.0**100), 2.0**100, width=32)


def test_link_delay():
    link = Link(bandwidth=1e9, latency=50e-6)
    assert link.delay(0) == 50e-6
    assert link.delay(1_000_000) == pytest.approx(1.05e-3)


def test_link_model_is_symmetric_with_a_default():
    fast, slow = Link(10e9, 1e-6), Link(1e9, 100e-6)
    model = LinkModel({(1, 0): slow}, default=fast)
    assert model.link(0, 1) is slow and model.link(1, 0) is slow
    assert model.link(0, 2) is fast
    assert LinkModel().link(0, 1) is None
    assert LinkModel.uniform(1e9, 1e-6).link(3, 5) == Link(1e9, 1e-6)


def test_bad_link():
    with pytest.raises(TransportError, match="bandwidth > 0"):
        Link(0, 1e-6)


@settings(max_examples=200, deadline=None)
@given(st.data(), st.integers(2, 5))
def test_ordered_sum_is_left_to_right_wherever_out_is(data, n):
    size = data.draw(st.integers(1, 40))
    parts = [data.draw(hnp.arrays(np.float32, size, elements=elements)) for _ in range(n)]
    want = parts[0].copy()
    for p in parts[1:]:
        want += p
    where = data.draw(st.sampled_from(["fresh", *range(n)]))
    if where == "fresh":
        out = np.empty(size, np.float32)
    else:
        parts = [p.copy() for p in parts]
        out = parts[where]
    _ordered_sum(parts, out)
    assert np.array_equal(out.view(np.uint32), want.view(np.uint32))


@given(st.integers(0, 1000), st.integers(1, 9))
def test_slices_cover_in_order(n, parts):
    cuts = slices(n, parts)
    assert len(cuts) == parts
    assert cuts[0][0] == 0 and cuts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:], strict=False))
    assert all(lo <= hi for lo, hi in cuts)
