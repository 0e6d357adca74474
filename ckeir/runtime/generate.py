"""Greedy generation over an engine that runs the compiled prefill and decode programs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Protocol

import attrs
import numpy as np

from ckeir.errors import CkeError


class Engine(Protocol):
    """Runs one phase program: `ids` at positions pos..pos+len(ids)-1 → (next id, logits)."""

    context: int
    max_prefill: int

    def prefill(self, ids: np.ndarray, pos: int) -> tuple[int, np.ndarray]: ...

    def decode(self, token: int, pos: int) -> tuple[int, np.ndarray]: ...

    def reset(self) -> None: ...


@attrs.define
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tps(self) -> float:
        # the first generated token comes from prefill; decode makes the rest
        n = max(self.generated_tokens - 1, 0)
        return n / self.decode_seconds if self.decode_seconds else 0.0


def check_ids(ids, vocab: int) -> np.ndarray:
    arr = np.asarray(list(ids), dtype=np.int64)
    if arr.size == 0:
        raise CkeError("the prompt is empty: give at least one token id")
    bad = arr[(arr < 0) | (arr >= vocab)]
    if bad.size:
        raise CkeError(f"token id {int(bad[0])} is outside the vocabulary (0..{vocab - 1})")
    return arr.astype(np.int32)


def generate_stream(
    engine: Engine,
    ids,
    max_new_tokens: int,
    vocab: int,
    stats: GenerationStats | None = None,
    on_logits: Callable[[int, np.ndarray], None] | None = None,
) -> Iterator[int]:
    """Yield greedy tokens one by one; the KV cache starts empty."""
    prompt = check_ids(ids, vocab)
    if len(prompt) + max_new_tokens > engine.context:
        raise CkeError(
            f"prompt ({len(prompt)} tokens) + {max_new_tokens} new tokens exceed the model's "
            f"context of {engine.context}"
        )
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = len(prompt)
    engine.reset()
    if max_new_tokens <= 0:
        return
    t0 = time.perf_counter()
    pos = 0
    for start in range(0, len(prompt), engine.max_prefill):
        chunk = prompt[start : start + engine.max_prefill]
        token, logits = engine.prefill(chunk, pos)
        pos += len(chunk)
    stats.prefill_seconds = time.perf_counter() - t0
    for step in range(max_new_tokens):
        if on_logits is not None:
            on_logits(step, logits)
        stats.generated_tokens += 1
        yield token
        if step + 1 == max_new_tokens:
            break
        t0 = time.perf_counter()
        token, logits = engine.decode(token, pos)
        stats.decode_seconds += time.perf_counter() - t0
        pos += 1
