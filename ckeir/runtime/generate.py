"""Generation over an engine that runs the compiled prefill and decode programs: greedy, or
sampled by a `sampling.Sampler`."""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import attrs
import numpy as np

from ckeir.errors import CkeError
from ckeir.limits import MAX_NEW_TOKENS, in_int_range, shown
from ckeir.runtime.sampling import Sampler


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


def check_request(ids, max_new_tokens: int, vocab: int, context: int) -> list[int]:
    """The prompt `ids` as a list of token ids, refused before any work if one is not an
    integer in the vocabulary, the token count is negative or absurd, or both do not fit the
    context.  The one check every way in (API, CLI, ranks) goes through."""
    if not in_int_range(max_new_tokens, 0, MAX_NEW_TOKENS):
        raise CkeError(
            f"max_new_tokens must be between 0 and {MAX_NEW_TOKENS}, not {shown(max_new_tokens)}"
        )
    prompt = []
    for i in ids:
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            raise CkeError(f"token ids are integers, not {shown(i)}")
        i = operator.index(i)  # numpy integers too
        if not 0 <= i < vocab:
            raise CkeError(
                f"token id {shown(i)} is not in the model's vocabulary of {vocab} tokens "
                f"(ids 0..{vocab - 1})"
            )
        prompt.append(i)
    if not prompt:
        raise CkeError("the prompt is empty: give at least one token id")
    if len(prompt) + max_new_tokens > context:
        raise CkeError(
            f"prompt ({len(prompt)} tokens) + {max_new_tokens} new tokens exceed the model's "
            f"context of {context}"
        )
    return prompt


def generate_stream(
    engine: Engine,
    ids,
    max_new_tokens: int,
    vocab: int,
    stats: GenerationStats | None = None,
    on_logits: Callable[[int, np.ndarray], None] | None = None,
    sampler: Sampler | None = None,
) -> Iterator[int]:
    """Yield tokens one by one, each the engine's argmax or `sampler`'s choice from the
    row's logits; the KV cache starts empty.  An engine with a `pick` hook (one rank of a
    world: `distributed.RankEngine`) is handed the sampler's choice: its root rank chooses
    before the token broadcast, so every rank follows the same id."""
    prompt = np.asarray(check_request(ids, max_new_tokens, vocab, engine.context), np.int32)
    history = prompt.tolist()  # what the sampler's penalties look back on
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = len(prompt)
    engine.reset()
    if max_new_tokens <= 0:
        return
    ranked = sampler is not None and hasattr(engine, "pick")

    def pick(argmax: int, logits: np.ndarray) -> int:
        return sampler.choose(logits, history, argmax)

    try:
        t0 = time.perf_counter()
        pos = 0
        for start in range(0, len(prompt), engine.max_prefill):
            chunk = prompt[start : start + engine.max_prefill]
            if ranked and start + len(chunk) == len(prompt):
                engine.pick = pick  # the last chunk's row: one draw, as on one rank
            token, logits = engine.prefill(chunk, pos)
            pos += len(chunk)
        stats.prefill_seconds = time.perf_counter() - t0
        for step in range(max_new_tokens):
            if on_logits is not None:
                on_logits(step, logits)
            if sampler is not None:
                if not ranked:
                    token = sampler.choose(logits, history, token)
                history.append(token)
            stats.generated_tokens += 1
            yield token
            if step + 1 == max_new_tokens:
                break
            t0 = time.perf_counter()
            token, logits = engine.decode(token, pos)
            stats.decode_seconds += time.perf_counter() - t0
            pos += 1
    finally:
        if ranked:
            engine.pick = None
