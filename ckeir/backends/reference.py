"""The reference backend: a plain numpy interpreter of the IR — the oracle for parity tests,
never the fast path.  Each op's semantics is written once here, as directly as numpy allows,
following the op docs in `ckeir.dialects.cke`.  Arithmetic is float64 and rounded to float32 at
each op's output, so that the native kernels' float32 rounding stays within its tolerance.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ckeir.errors import BackendError
from ckeir.ir.core import Operation
from ckeir.quant import quantize_activations


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _rope(x, pos, theta, head_dim, style):
    t, width = x.shape
    heads = x.reshape(t, width // head_dim, head_dim).astype(np.float64)
    half = head_dim // 2
    freq = theta ** (-2.0 * np.arange(half) / head_dim)
    angle = (pos + np.arange(t))[:, None] * freq[None, :]
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


def _attention(q, k, v, kcache, vcache, pos, heads, kv_heads, head_dim, layer):
    t = q.shape[0]
    kcache[layer, pos : pos + t] = k
    vcache[layer, pos : pos + t] = v
    n = pos + t
    keys = kcache[layer, :n].reshape(n, kv_heads, head_dim).astype(np.float64)
    vals = vcache[layer, :n].reshape(n, kv_heads, head_dim).astype(np.float64)
    group = heads // kv_heads
    qh = q.reshape(t, heads, head_dim).astype(np.float64)
    out = np.empty((t, heads, head_dim))
    for h in range(heads):
        g = h // group
        s = qh[:, h, :] @ keys[:, g, :].T / np.sqrt(head_dim)  # (t, n)
        s[np.arange(n)[None, :] > (pos + np.arange(t))[:, None]] = -np.inf
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        out[:, h, :] = p @ vals[:, g, :]
    return _f32(out.reshape(t, heads * head_dim))


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


def _rmsnorm(x, w, eps):
    x64 = x.astype(np.float64)
    return _f32(x64 / np.sqrt((x64 * x64).mean(axis=1, keepdims=True) + eps) * w)


def _silu_mul(g, u):
    g64 = g.astype(np.float64)
    return _f32(g64 / (1.0 + np.exp(-g64)) * u)


# op name -> (operands, attributes, env) -> result
SEMANTICS: dict[str, Callable] = {
    "cke.embed": lambda o, a, env: _f32(o[1][o[0]]),
    "cke.rmsnorm": lambda o, a, env: _rmsnorm(o[0], o[1], a["eps"]),
    "cke.matmul": lambda o, a, env: _matmul(o[0], o[1], a.get("act")),
    "cke.rope": lambda o, a, env: _rope(o[0], int(o[1]), a["theta"], a["head_dim"], a["style"]),
    "cke.attention": lambda o, a, env: _attention(
        *o[:5], int(o[5]), a["heads"], a["kv_heads"], a["head_dim"], a["layer"]
    ),
    "cke.silu_mul": lambda o, a, env: _silu_mul(o[0], o[1]),
    "cke.add": lambda o, a, env: _f32(o[0].astype(np.float64) + o[1]),
    "cke.last_token": lambda o, a, env: o[0][-1:],
    "cke.argmax": lambda o, a, env: np.array([int(np.argmax(o[0][-1]))], dtype=np.int32),
    "cke.requant": lambda o, a, env: _requant(o[0], a["format"]),
    "mem.arena": None,
}


def run_func(func: Operation, weights: dict[str, np.ndarray], args: list) -> list:
    """Interpret a `cke.func` with the given entry arguments; returns the returned values.
    `weights` maps names to float arrays (quantized weights are dequantized by the caller)."""
    block = func.regions[0].entry
    env = dict(zip(block.args, args, strict=True))
    for op in block.ops:
        if op.name == "cke.return":
            return [env[v] for v in op.operands]
        if op.name == "cke.weight":
            env[op.results[0]] = weights[op.attr("name")]
            continue
        fn = SEMANTICS.get(op.name, False)
        if fn is None:
            continue
        if fn is False:
            raise BackendError(f"reference backend: no semantics for '{op.name}'")
        attrs = {k: v.value for k, v in op.attributes.items()}
        env[op.results[0]] = fn([env[v] for v in op.operands], attrs, env)
    raise BackendError(f"func {func.attr('sym_name')} has no cke.return")


class ReferenceEngine:
    """Engine (see `ckeir.runtime.generate`) interpreting the IR with numpy."""

    def __init__(self, module: Operation, weights: dict[str, np.ndarray], cache_shape):
        self.funcs = {
            f.attr("sym_name"): f for f in module.regions[0].entry.ops if f.name == "cke.func"
        }
        self.weights = weights
        self.kcache = np.zeros(cache_shape, dtype=np.float32)
        self.vcache = np.zeros(cache_shape, dtype=np.float32)
        self.context = cache_shape[1]
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
        return self._run("decode", [token], pos)

    def reset(self) -> None:
        """Start a new sequence.  The KV cache is not cleared: attention reads rows 0..pos+t
        only, and every one of them is written first; clearing would make the whole cache
        (hundreds of MB at long contexts) resident for nothing."""

    def close(self) -> None:
        pass
