"""Choosing the next token from a row's logits: greedy, or sampled as llama.cpp samples.

`Sampling` holds a request's options, validated once (`Sampling.of(**options)` raises a
`CkeError` naming the option); `Sampling.sampler()` gives the request's `Sampler`, which
owns its random state (seeded: the same seed draws the same ids, on any engine whose logits
agree).  A `Sampler` is a `batching.Pick`: `Scheduler.submit(pick=sampler)`; the
one-sequence loop (`generate.generate_stream`) calls it too.

The chain is llama.cpp's default order: penalties, top_k, top_p, min_p, temperature, then
one draw.  Truncation sees the probabilities at temperature 1 (as llama.cpp's chain does:
its temperature stage comes after them); temperature 0 takes the largest logit, which with
no penalty is the engine's own argmax, so greedy sampling is exactly `generate`.

Penalties, with llama.cpp's definitions, over the last `repeat_last_n` ids of the sequence
(prompt included; -1: all of it): a token seen c > 0 times has its logit divided by
`repeat_penalty` if positive, multiplied by it if not, then lowered by
`c * frequency_penalty + presence_penalty`.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Sequence as Ids

import attrs
import numpy as np

from ckeir.errors import CkeError
from ckeir.limits import in_int_range, in_real_range, shown

MAX_SEED = (1 << 64) - 1
MAX_TOP_K = 1 << 24
MAX_TEMPERATURE = 100.0
MAX_PENALTY = 100.0  # presence / frequency (OpenAI allows -2..2; llama.cpp any float)


@attrs.frozen
class Sampling:
    """A request's sampling options; the defaults are greedy (`generate`'s choice)."""

    temperature: float = 0.0  # 0: the largest logit
    top_k: int = 0  # keep the k likeliest ids (0: all)
    top_p: float = 1.0  # keep the likeliest ids whose probabilities sum to top_p (1: all)
    min_p: float = 0.0  # keep ids at least min_p times as likely as the likeliest (0: all)
    seed: int | None = None  # the random state's seed (None: a fresh one per request)
    repeat_penalty: float = 1.0  # 1: none
    repeat_last_n: int = 64  # the window the penalties look at (-1: the whole sequence)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    OPTIONS = (
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "seed",
        "repeat_penalty",
        "repeat_last_n",
        "presence_penalty",
        "frequency_penalty",
    )

    @classmethod
    def of(cls, **options) -> Sampling:
        """Options checked one by one; None means the default.  An unknown name, a value of
        the wrong type or out of range is a CkeError naming the option."""
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            raise CkeError(
                f"unknown sampling option {unknown[0]!r}",
                hint="sampling options: " + ", ".join(cls.OPTIONS),
            )
        given = {k: v for k, v in options.items() if v is not None}
        for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
            if name in given:
                given[name] = _real(name, given[name], *REAL_RANGES[name])
        for name in ("presence_penalty", "frequency_penalty"):
            if name in given:
                given[name] = _real(name, given[name], -MAX_PENALTY, MAX_PENALTY)
        if "repeat_penalty" in given and given["repeat_penalty"] == 0:
            raise CkeError("repeat_penalty must be positive (1 means none), not 0")
        if "top_p" in given and given["top_p"] == 0:
            raise CkeError("top_p must be above 0 (1 keeps every id), not 0")
        if "top_k" in given:
            given["top_k"] = _integer("top_k", given["top_k"], 0, MAX_TOP_K)
        if "repeat_last_n" in given:
            given["repeat_last_n"] = _integer("repeat_last_n", given["repeat_last_n"], -1, 1 << 24)
        if "seed" in given:
            given["seed"] = _integer("seed", given["seed"], 0, MAX_SEED)
        return cls(**given)

    @property
    def penalized(self) -> bool:
        return (
            self.repeat_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        ) and self.repeat_last_n != 0

    @property
    def greedy(self) -> bool:
        """Whether the engine's argmax is the choice (no draw, no penalty)."""
        return self.temperature == 0.0 and not self.penalized

    def sampler(self) -> Sampler:
        return Sampler(self)

    def pick(self) -> Sampler | None:
        """A request's `pick` for `Scheduler.submit`: None when greedy (the scheduler's own
        argmax: an engine then sends no logits where it can avoid them)."""
        return None if self.greedy else Sampler(self)


REAL_RANGES = {
    "temperature": (0.0, MAX_TEMPERATURE),
    "top_p": (0.0, 1.0),
    "min_p": (0.0, 1.0),
    "repeat_penalty": (0.0, MAX_PENALTY),
}


def _real(name: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise CkeError(f"{name} is a number, not {shown(value)}")
    if not in_real_range(float(value), lo, hi):
        raise CkeError(f"{name} must be between {lo:g} and {hi:g}, not {shown(value)}")
    return float(value)


def _integer(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise CkeError(f"{name} is an integer, not {shown(value)}")
    if not in_int_range(int(value), lo, hi):
        raise CkeError(f"{name} must be between {lo} and {hi}, not {shown(value)}")
    return int(value)


class Sampler:
    """One sequence's choices: its options and its random state.  Call it as a
    `batching.Pick` (`sampler(seq, argmax, logits)`) or with the history at hand
    (`choose`)."""

    def __init__(self, options: Sampling):
        self.options = options
        self.seed = options.seed if options.seed is not None else secrets.randbits(64)
        self.rng = np.random.Generator(np.random.PCG64(self.seed))

    def __call__(self, seq, argmax: int, logits: np.ndarray) -> int:
        if self.options.greedy:
            return int(argmax)
        return self.choose(logits, [*seq.prompt, *seq.tokens], argmax)

    def choose(self, logits: np.ndarray, history: Ids[int], argmax: int | None = None) -> int:
        """The next id after `history` (prompt and generated ids) from its row's logits."""
        o = self.options
        if o.greedy and argmax is not None:
            return int(argmax)
        x = np.array(logits, np.float64).reshape(-1)
        if o.penalized:
            penalize(x, history, o)
        if o.temperature == 0.0:
            return int(np.argmax(x))
        ids, p = kept(x, o)
        cdf = np.cumsum(p)
        # one uniform draw against the kept ids in id order: the same draw, the same id
        u = self.rng.random() * cdf[-1]
        return int(ids[min(int(np.searchsorted(cdf, u, side="right")), len(ids) - 1)])


def penalize(x: np.ndarray, history: Ids[int], o: Sampling) -> None:
    """llama.cpp's repetition, frequency and presence penalties, in place."""
    window = history if o.repeat_last_n < 0 else history[len(history) - o.repeat_last_n :]
    counts = Counter(t for t in window if 0 <= t < len(x))
    if not counts:
        return
    ids = np.fromiter(counts, np.int64, len(counts))
    c = np.fromiter(counts.values(), np.float64, len(counts))
    v = x[ids]
    v = np.where(v > 0, v / o.repeat_penalty, v * o.repeat_penalty)
    x[ids] = v - c * o.frequency_penalty - o.presence_penalty


def truncate(x: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """The ids (ascending) left after top_k, top_p and min_p, as llama.cpp applies them one
    after another; the likeliest id always stays.  Sorts only the likeliest ids the filters
    can keep (a vocabulary-wide sort costs more than a small model's decode step)."""
    n = len(x)
    if not 0 < top_k < n and top_p >= 1.0 and min_p <= 0.0:
        return np.arange(n)
    # the filters see probabilities over the top_k ids, or over the whole vocabulary
    k = top_k if 0 < top_k < n else min(n, 64)
    total = None if 0 < top_k < n else np.exp(x - x.max()).sum()
    while True:
        order = _likeliest(x, k)[:top_k] if total is None else _likeliest(x, k)
        z = x[order]
        p = np.exp(z - z[0])
        p /= p.sum() if total is None else total
        keep = len(order)
        if top_p < 1.0:
            # the smallest prefix whose mass reaches top_p
            keep = min(keep, int(np.searchsorted(np.cumsum(p), top_p, side="left")) + 1)
        if min_p > 0.0:
            keep = min(keep, max(1, int(np.count_nonzero(p[:keep] >= min_p * p[0]))))
        # enough ids sorted: the filters stop inside them, or every id is in
        if total is None or keep < len(order) or len(order) == n:
            return np.sort(order[:keep])
        k = min(n, 4 * k)


def _likeliest(x: np.ndarray, k: int) -> np.ndarray:
    """The k likeliest ids, likeliest first, ties by id (a prefix of a stable descending
    sort of all of them; ties with the k-th value come along)."""
    if k < len(x):
        threshold = np.partition(x, len(x) - k)[len(x) - k]
        ids = np.flatnonzero(x >= threshold)
    else:
        ids = np.arange(len(x))
    return ids[np.argsort(-x[ids], kind="stable")]


def kept(x: np.ndarray, o: Sampling) -> tuple[np.ndarray, np.ndarray]:
    """The ids truncation keeps (ascending) and their probabilities at `o.temperature` (> 0)."""
    ids = truncate(x, o.top_k, o.top_p, o.min_p)
    z = x[ids] / o.temperature
    p = np.exp(z - z.max())
    return ids, p / p.sum()


def probabilities(logits: np.ndarray, options: Sampling) -> dict[int, float]:
    """The distribution a sampler draws from (before penalties): id -> probability over the
    ids truncation keeps."""
    x = np.array(logits, np.float64).reshape(-1)
    if options.temperature == 0.0:
        return {int(np.argmax(x)): 1.0}
    ids, p = kept(x, options)
    return {int(i): float(q) for i, q in zip(ids, p, strict=True)}
