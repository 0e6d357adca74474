"""The reference backend: a plain numpy interpreter of the IR — the oracle for parity tests,
never the fast path.  Each op's semantics is written once here, as directly as numpy allows,
following the op docs in `ckeir.dialects.cke`.  Arithmetic is float64 and rounded to float32 at
each op's output, so that the native kernels' float32 rounding stays within its tolerance.

A batched decode func (`slots`) runs row by row where rows meet in one sum (matmuls, norms,
attention in its row's slot), so that each row's result is the float64 arithmetic a
one-sequence decode does on that row, whichever rows share the step.  `ReferenceSlots` runs a
module's prefill and batched decode programs as the `SlotEngine` of continuous batching.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ckeir.errors import BackendError
from ckeir.ir.core import Operation
from ckeir.quant import quantize_activations
from ckeir.runtime.batching import check_rows, check_span


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _positions(pos, t: int) -> np.ndarray:
    """Each row's position: pos + t for a sequence's rows, pos[t] for a batched func's."""
    if np.ndim(pos) == 0:
        return int(pos) + np.arange(t)
    return np.asarray(pos, dtype=np.int64)


def _rope(x, pos, theta, head_dim, style):
    t, width = x.shape
    heads = x.reshape(t, width // head_dim, head_dim).astype(np.float64)
    half = head_dim // 2
    freq = theta ** (-2.0 * np.arange(half) / head_dim)
    angle = _positions(pos, t)[:, None] * freq[None, :]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    if style == "interleaved":
        a, b = heads[..., 0::2], heads[..., 1::2]
    else:
        a, b = heads[..., :half], heads[..., half:]
    ra, rb = a * cos - b * sin, a * sin + b * cos
    out = np.empty_like(heads)
    if style == "interleaved":
        out[..., 0::2], out[..., 1::2] = ra, rb
    else:
        out[..., :half], out[..., half:] = ra, rb
    return _f32(out.reshape(t, width))


def _attention(
    q, k, v, kcache, vcache, pos, heads, kv_heads, head_dim, layer, window=0, kv_row=None, ring=0
):
    """Store k, v at positions pos.. of the layer's cache, then attend (see cke.attention):
    the layer is `kcache[layer]` of an (L, C, KVD) cache, or the rows from `kv_row` on of a
    packed one, where a `ring` of R rows keeps position p in row p mod R."""
    t = q.shape[0]
    kc, vc = (c[layer] if kv_row is None else c[kv_row:] for c in (kcache, vcache))
    n = pos + t
    stored = pos + np.arange(t)
    first = max(0, pos - window + 1) if ring else 0  # a ring keeps only the window's keys
    seen = np.arange(first, n)  # positions of the keys read
    rows = (stored % ring, seen % ring) if ring else (stored, seen)
    kc[rows[0]], vc[rows[0]] = k, v
    keys = kc[rows[1]].reshape(n - first, kv_heads, head_dim).astype(np.float64)
    vals = vc[rows[1]].reshape(n - first, kv_heads, head_dim).astype(np.float64)
    group = heads // kv_heads
    qh = q.reshape(t, heads, head_dim).astype(np.float64)
    out = np.empty((t, heads, head_dim))
    for h in range(heads):
        g = h // group
        s = qh[:, h, :] @ keys[:, g, :].T / np.sqrt(head_dim)  # (t, keys read)
        at = stored[:, None]  # each row's position; it sees keys at..at-W+1
        keys_at = seen[None, :]
        s[(keys_at > at) | ((keys_at <= at - window) if window else False)] = -np.inf
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        out[:, h, :] = p @ vals[:, g, :]
    return _f32(out.reshape(t, heads * head_dim))


def _batched_attention(q, k, v, kcache, vcache, pos, slots, *shape):
    """Row t in slot slots[t] at position pos[t]: one sequence's one-row attention on its
    slot's cache."""
    out = [
        _attention(q[t : t + 1], k[t : t + 1], v[t : t + 1], kcache[s], vcache[s], int(p), *shape)
        for t, (p, s) in enumerate(zip(pos, slots, strict=True))
    ]
    return np.concatenate(out) if out else _f32(np.zeros(q.shape))


def _attention_op(o, a, env):
    shape = (a["heads"], a["kv_heads"], a["head_dim"], a["layer"], a.get("window", 0))
    shape += (a.get("kv_row"), a.get("kv_rows", 0))
    if len(o) == 7:
        return _batched_attention(*o[:5], o[5], o[6], *shape)
    return _attention(*o[:5], int(o[5]), *shape)


def _matmul(x, w, act):
    """x @ w^T; with `act = "q8_0"` x is first rounded to 8-bit blocks (ckeir.quant)."""
    if act == "q8_0":
        q, d = quantize_activations(x)
        x = (q.reshape(*q.shape[:-1], -1, 32) * d[..., None].astype(np.float64)).reshape(q.shape)
    return _f32(x.astype(np.float64) @ w.astype(np.float64).T)


def _requant(x, fmt):
    """x through GGML blocks and back, with gguf's numerics (what crosses ranks)."""
    from gguf import GGMLQuantizationType, quants

    t = GGMLQuantizationType[fmt.upper()]
    return _f32(quants.dequantize(quants.quantize(_f32(x), t), t))


def _rmsnorm(x, w, eps, head_dim=None):
    """Each row, or with head_dim each head_dim-wide head of a row, normed alone."""
    x64 = x.astype(np.float64)
    if head_dim is not None:
        x64 = x64.reshape(-1, head_dim)
    out = x64 / np.sqrt((x64 * x64).mean(axis=1, keepdims=True) + eps) * w
    return _f32(out.reshape(x.shape))


def _gelu_mul(g, u):
    """GELU's tanh form of the gate, times up."""
    g64 = g.astype(np.float64)
    inner = np.sqrt(2.0 / np.pi) * (g64 + 0.044715 * g64**3)
    return _f32(0.5 * g64 * (1.0 + np.tanh(inner)) * u)


def _embed(ids, table, scale):
    rows = table[ids]
    return _f32(rows if scale is None else rows.astype(np.float64) * scale)


def _silu_mul(g, u):
    g64 = g.astype(np.float64)
    return _f32(g64 / (1.0 + np.exp(-g64)) * u)


# op name -> (operands, attributes, env) -> result
SEMANTICS: dict[str, Callable] = {
    "cke.embed": lambda o, a, env: _embed(o[0], o[1], a.get("scale")),
    "cke.rmsnorm": lambda o, a, env: _rmsnorm(o[0], o[1], a["eps"], a.get("head_dim")),
    "cke.matmul": lambda o, a, env: _matmul(o[0], o[1], a.get("act")),
    "cke.rope": lambda o, a, env: _rope(o[0], o[1], a["theta"], a["head_dim"], a["style"]),
    "cke.attention": _attention_op,
    "cke.silu_mul": lambda o, a, env: _silu_mul(o[0], o[1]),
    "cke.gelu_mul": lambda o, a, env: _gelu_mul(o[0], o[1]),
    "cke.add": lambda o, a, env: _f32(o[0].astype(np.float64) + o[1]),
    "cke.last_token": lambda o, a, env: o[0][-1:],
    "cke.argmax": lambda o, a, env: np.argmax(o[0], axis=1).astype(np.int32),
    "cke.requant": lambda o, a, env: _requant(o[0], a["format"]),
    "mem.arena": None,
}


def _row_by_row(fn: Callable) -> Callable:
    """`fn` on each row of its first operand alone (the other operands whole), stacked."""

    def each_row(o, a, env):
        rows = [fn([o[0][t : t + 1], *o[1:]], a, env) for t in range(len(o[0]))]
        return np.concatenate(rows) if rows else fn(o, a, env)

    return each_row


# In a batched func, ops that sum along a row see one row at a time (see the module doc).
BATCHED_SEMANTICS = SEMANTICS | {
    name: _row_by_row(SEMANTICS[name]) for name in ("cke.matmul", "cke.rmsnorm")
}


def run_func(func: Operation, weights: dict[str, np.ndarray], args: list) -> list:
    """Interpret a `cke.func` with the given entry arguments; returns the returned values.
    `weights` maps names to float arrays (quantized weights are dequantized by the caller)."""
    semantics = SEMANTICS if func.attr("slots") is None else BATCHED_SEMANTICS
    block = func.regions[0].entry
    env = dict(zip(block.args, args, strict=True))
    for op in block.ops:
        if op.name == "cke.return":
            return [env[v] for v in op.operands]
        if op.name == "cke.weight":
            env[op.results[0]] = weights[op.attr("name")]
            continue
        fn = semantics.get(op.name, False)
        if fn is None:
            continue
        if fn is False:
            raise BackendError(f"reference backend: no semantics for '{op.name}'")
        attrs = {k: v.value for k, v in op.attributes.items()}
        env[op.results[0]] = fn([env[v] for v in op.operands], attrs, env)
    raise BackendError(f"func {func.attr('sym_name')} has no cke.return")


class ReferenceEngine:
    """Engine (see `ckeir.runtime.generate`) interpreting the IR with numpy.  A module whose
    decode program is batched decodes here as its slot 0 (one sequence)."""

    def __init__(self, module: Operation, weights: dict[str, np.ndarray], cache_shape):
        self.funcs = _funcs(module)
        self.weights = weights
        self.context = cache_shape[1]
        rows = self.funcs["prefill"].attr("kv_rows")  # plan-memory packed it (rings)
        if rows is not None:
            cache_shape = (rows, cache_shape[-1])
        self.kcache = np.zeros(cache_shape, dtype=np.float32)
        self.vcache = np.zeros(cache_shape, dtype=np.float32)
        self.max_prefill = self.funcs["prefill"].attr("max_tokens", self.context)

    def _run(self, name, ids, pos):
        token, logits = run_func(
            self.funcs[name],
            self.weights,
            [np.asarray(ids, np.int32), pos, self.kcache, self.vcache],
        )
        return int(token[0]), logits

    def prefill(self, ids, pos):
        return self._run("prefill", ids, pos)

    def decode(self, token, pos):
        func = self.funcs["decode"]
        if func.attr("slots") is None:
            return self._run("decode", [token], pos)
        ids, positions, slots = _rows([(0, token, pos)])  # this sequence in slot 0 of
        caches = [self.kcache[None], self.vcache[None]]  # a one-slot view of the caches
        token, logits = run_func(func, self.weights, [ids, positions, *caches, slots])
        return int(token[0]), logits

    def reset(self) -> None:
        """Start a new sequence.  The KV cache is not cleared: attention reads rows 0..pos+t
        only, and every one of them is written first; clearing would make the whole cache
        (hundreds of MB at long contexts) resident for nothing."""

    def close(self) -> None:
        pass


class ReferenceSlots:
    """A `SlotEngine` (`ckeir.runtime.batching`) over a module's prefill program and batched
    decode program: KV caches of (slots, layers, context, kv_dim), the prefill program run on
    one slot's region, a decode step on up to `slots` rows at once."""

    def __init__(self, module: Operation, weights: dict[str, np.ndarray]):
        self.funcs = _funcs(module)
        decode = self.funcs["decode"]
        self.slots = decode.attr("slots")
        if self.slots is None:
            raise BackendError(
                "the module's decode program is not batched (no `slots`): build it with a "
                "schedule's `batch N`, N > 1"
            )
        shape = decode.regions[0].entry.args[2].type.shape  # (B, L, C, KVD)
        self.context = shape[2]
        if decode.attr("kv_rows") is not None:  # plan-memory packed it (rings)
            shape = (shape[0], decode.attr("kv_rows"), shape[3])
        self.kcache = np.zeros(shape, dtype=np.float32)
        self.vcache = np.zeros(shape, dtype=np.float32)
        self.max_prefill = self.funcs["prefill"].attr("max_tokens", self.context)
        self.vocab = decode.regions[0].entry.terminator.operands[1].type.shape[1]
        self.weights = weights

    def prefill(self, slot: int, ids, pos: int) -> tuple[int, np.ndarray]:
        ids = np.asarray(ids, np.int32)
        check_span(slot, pos, len(ids), self.slots, self.context)
        args = [ids, pos, self.kcache[slot], self.vcache[slot]]
        token, logits = run_func(self.funcs["prefill"], self.weights, args)
        return int(token[0]), logits

    def decode(self, rows: list[tuple[int, int, int]]) -> list[tuple[int, np.ndarray]]:
        check_rows(rows, self.slots, self.context, self.vocab)
        ids, positions, slots = _rows(rows)
        args = [ids, positions, self.kcache, self.vcache, slots]
        tokens, logits = run_func(self.funcs["decode"], self.weights, args)
        return [(int(tokens[t]), logits[t].copy()) for t in range(len(rows))]

    def release(self, slot: int) -> None:
        """Nothing to clear (see `ReferenceEngine.reset`): a slot's next sequence writes each
        cache row before attention reads it."""
        check_span(slot, 0, 1, self.slots, self.context)

    def close(self) -> None:
        pass


def _funcs(module: Operation) -> dict[str, Operation]:
    return {f.attr("sym_name"): f for f in module.regions[0].entry.ops if f.name == "cke.func"}


def _rows(rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A decode step's (slot, token, pos) rows as its ids, positions and slots arguments."""
    slots, ids, pos = zip(*rows, strict=True)
    return np.array(ids, np.int32), np.array(pos, np.int64), np.array(slots, np.int32)
