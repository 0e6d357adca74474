"""The transformer graph every family shares: hyper-parameters → a prefill or decode `cke.func`.

RMSNorm → Q/K/V projections → RoPE → grouped-query causal attention over the KV cache →
output projection → residual; RMSNorm → gated FFN → residual; final norm, LM head (tied to
the embedding table or not), argmax.  The family (`ckeir.models.family`) adds blocks: a
scaled embedding, per-head norms of Q and K before RoPE, norms of the attention and FFN
outputs before their residual adds, a GELU gate instead of SiLU, sliding-window attention
with its own RoPE base on some layers.  Weight names are GGUF's.  The builder leaves value
types unranked (`tensor<*xf32>`): the shape-infer pass types them from the weights' shapes.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

from ckeir.errors import CkeError
from ckeir.ir.attributes import to_attr
from ckeir.ir.core import Block, Builder, Operation, Region, module_op
from ckeir.ir.types import DYN, MemRefType, TensorType, UnrankedTensorType, f32, i32, i64
from ckeir.models.family import Family, family

GATES = {"silu": "cke.silu_mul", "gelu": "cke.gelu_mul"}


@attrs.frozen
class ModelConfig:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    context: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    rope_style: str = "halves"
    family: str = "llama"
    key_length: int | None = None  # a head's width when it is not hidden / heads
    window: int | None = None  # keys a sliding-window layer sees (default: the family's)
    local_rope_theta: float | None = None  # RoPE base of those layers (default: the family's)

    @property
    def spec(self) -> Family:
        return family(self.family)

    @property
    def head_dim(self) -> int:
        return self.key_length or self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_window(self, layer: int) -> int:
        """Keys a layer attends to (0: all of its context)."""
        window = self.window or self.spec.window if self.spec.sliding(layer) else 0
        return window if window < self.context else 0  # a window of the whole context: none

    def layer_rope_theta(self, layer: int) -> float:
        if not self.spec.sliding(layer):
            return float(self.rope_theta)
        return float(self.local_rope_theta or self.spec.local_rope_theta)

    @property
    def embed_scale(self) -> float | None:
        """What embeddings are multiplied by (Gemma: sqrt(hidden), rounded to f32 as
        llama.cpp computes it), or None."""
        return float(np.float32(math.sqrt(self.hidden))) if self.spec.embed_scale else None

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter by GGUF name, as (rows, row length)."""
        fam = self.spec
        d, f, hd = self.hidden, self.ffn, self.head_dim
        q, kv = self.heads * hd, self.kv_dim
        shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (self.vocab, d)}
        for i in range(self.layers):
            p = f"blk.{i}."
            shapes |= {
                p + "attn_norm.weight": (d,),
                p + "attn_q.weight": (q, d),
                p + "attn_k.weight": (kv, d),
                p + "attn_v.weight": (kv, d),
                p + "attn_output.weight": (d, q),
            }
            if fam.qk_norm:
                shapes |= {p + "attn_q_norm.weight": (hd,), p + "attn_k_norm.weight": (hd,)}
            if fam.post_norms:
                shapes[p + "post_attention_norm.weight"] = (d,)
            shapes |= {
                p + "ffn_norm.weight": (d,),
                p + "ffn_gate.weight": (f, d),
                p + "ffn_up.weight": (f, d),
                p + "ffn_down.weight": (d, f),
            }
            if fam.post_norms:
                shapes[p + "post_ffw_norm.weight"] = (d,)
        shapes["output_norm.weight"] = (d,)
        if not self.tie_embeddings:
            shapes["output.weight"] = (self.vocab, d)
        return shapes

    def cache_type(self, slots: int | None = None) -> MemRefType:
        """One sequence's KV cache (L x C x KVD), or `slots` of them, slot outermost."""
        shape = (self.layers, self.context, self.kv_dim)
        return MemRefType(shape if slots is None else (slots, *shape), f32)


def _inputs(cfg: ModelConfig, phase: str, batch: int) -> Block:
    """The entry block: (ids, pos, kcache, vcache), and for a batched decode func per-row
    positions, caches of `batch` slots and each row's slot (ckeir.dialects.cke)."""
    if phase == "decode" and batch > 1:
        rows = TensorType((DYN,), i32)
        cache = cfg.cache_type(batch)
        return Block([rows, TensorType((DYN,), i64), cache, cache, rows])
    rows = DYN if phase == "prefill" else 1
    return Block([TensorType((rows,), i32), i64, cfg.cache_type(), cfg.cache_type()])


def rotated(b: Builder, y, pos, norm, gains: str, rope: dict):
    """A projection's heads normed one by one (each head_dim wide), then rotated."""
    y = norm(y, gains, head_dim=rope["head_dim"])
    return b.value("cke.rope", [y, pos], UnrankedTensorType(f32), **rope)


def build_program(
    cfg: ModelConfig,
    phase: str,
    max_tokens: int | None = None,
    weight_types=None,
    batch: int = 1,
) -> Operation:
    """One `cke.func` for `phase` ('prefill': up to max_tokens rows of one sequence,
    'decode': one row, or with `batch` > 1 up to `batch` rows, each the last token of its own
    sequence).  `weight_types` gives the element type a weight is stored in (default f32)."""
    fam = cfg.spec
    batched = phase == "decode" and batch > 1
    block = _inputs(cfg, phase, batch)
    ids, pos, kcache, vcache = block.args[:4]
    slots = block.args[4:]  # the batched func's slot of each row
    b = Builder(block)
    u = UnrankedTensorType(f32)
    shapes = cfg.weight_shapes()
    weights: dict[str, object] = {}
    eps = float(cfg.norm_eps)

    def w(name: str):
        """The weight op (created on first use); a layer's weights carry its `layer`."""
        if name not in weights:
            elt = (weight_types or {}).get(name, f32)
            weights[name] = b.value(
                "cke.weight", [], UnrankedTensorType(elt), name=name, shape=shapes[name]
            )
        return weights[name]

    def mm(x, name):
        return b.value("cke.matmul", [x, w(name)], u)

    def norm(x, name, **head):
        return b.value("cke.rmsnorm", [x, w(name)], u, eps=eps, **head)

    scale = {} if cfg.embed_scale is None else {"scale": cfg.embed_scale}
    x = b.value("cke.embed", [ids, w("token_embd.weight")], u, **scale)
    hd = cfg.head_dim
    for layer in range(cfg.layers):
        first = len(block.ops)
        p = f"blk.{layer}."
        rope = dict(theta=cfg.layer_rope_theta(layer), head_dim=hd, style=cfg.rope_style)
        h = norm(x, p + "attn_norm.weight")

        q, k = (
            rotated(b, mm(h, p + f"attn_{x}.weight"), pos, norm, p + f"attn_{x}_norm.weight", rope)
            if fam.qk_norm
            else b.value("cke.rope", [mm(h, p + f"attn_{x}.weight"), pos], u, **rope)
            for x in "qk"
        )
        v = mm(h, p + "attn_v.weight")
        window = cfg.layer_window(layer)
        a = b.value(
            "cke.attention",
            [q, k, v, kcache, vcache, pos, *slots],
            u,
            heads=cfg.heads,
            kv_heads=cfg.kv_heads,
            head_dim=hd,
            layer=layer,
            **({"window": window} if window else {}),
        )
        o = mm(a, p + "attn_output.weight")
        if fam.post_norms:
            o = norm(o, p + "post_attention_norm.weight")
        x = b.value("cke.add", [x, o], u)
        h = norm(x, p + "ffn_norm.weight")
        g = b.value(GATES[fam.gate], [mm(h, p + "ffn_gate.weight"), mm(h, p + "ffn_up.weight")], u)
        o = mm(g, p + "ffn_down.weight")
        if fam.post_norms:
            o = norm(o, p + "post_ffw_norm.weight")
        x = b.value("cke.add", [x, o], u)
        for op in block.ops[first:]:  # every op of the layer says so: the unit of placement
            op.attributes["layer"] = to_attr(layer)
    if phase == "prefill":
        x = b.value("cke.last_token", [x], u)
    x = norm(x, "output_norm.weight")
    head = "token_embd.weight" if cfg.tie_embeddings else "output.weight"
    logits = mm(x, head)
    token = b.value("cke.argmax", [logits], TensorType((DYN if batched else 1,), i32))
    b.op("cke.return", [token, logits])
    attributes = {"sym_name": phase, "phase": phase}
    if phase == "prefill":
        attributes["max_tokens"] = int(max_tokens or cfg.context)
    if batched:
        attributes |= {"max_tokens": batch, "slots": batch}
    return Operation("cke.func", regions=[Region([block])], attributes=attributes)


def build_module(
    cfg: ModelConfig, phases=("prefill", "decode"), max_tokens=None, weight_types=None, batch=1
) -> Operation:
    """A module with one program per phase (decode for `batch` sequence slots)."""
    return module_op(build_program(cfg, ph, max_tokens, weight_types, batch) for ph in phases)


def config_from_decl(model, model_file=None, **overrides) -> ModelConfig:
    """The config a model declaration states (random weights: all of it), with what only a
    family's file says (a head width other than hidden / heads, the sliding window, the
    local RoPE base: `ModelFile.family_params`) and `overrides` on top."""
    name = model.family or "llama"
    try:
        fam = family(name)
    except ValueError as e:
        raise CkeError(f"model {model.name}: {e}", loc=model.loc) from None
    missing = [
        k
        for k in ("vocab", "hidden", "layers", "heads", "ffn", "context")
        if getattr(model, k) is None
    ]
    if missing:
        raise CkeError(
            f"model {model.name}: hyper-parameters {', '.join(missing)} are unknown "
            "(state them, or load weights from a file that has them)",
            loc=model.loc,
        )
    # What neither the spec nor the file states takes the family's usual values (a
    # safetensors file carries no hyper-parameters: Hugging Face's RoPE pairs halves).
    tied = model.tie_embeddings
    if tied is None:
        tied = (
            "output.weight" not in model_file.tensors
            if model_file is not None
            else fam.tied_by_default
        )
    extra = model_file.family_params() if model_file is not None else {}
    if model.window is not None:  # the spec's window, where the file has one it must agree
        if extra.get("window", model.window) != model.window:
            raise CkeError(
                f"window {model.window} disagrees with {model_file.path}, which has "
                f"{extra['window']}",
                loc=model.key_locs.get("window", model.loc),
                hint=f"remove 'window' from model {model.name} or make it match the file",
            )
        extra = extra | {"window": model.window}
    if model.stated_head_dim is not None:
        extra = extra | {"key_length": _stated_head_dim(model, model_file, extra)}
    fields = dict(
        vocab=model.vocab,
        hidden=model.hidden,
        layers=model.layers,
        heads=model.heads,
        kv_heads=model.heads if model.kv_heads is None else model.kv_heads,
        ffn=model.ffn,
        context=model.context,
        norm_eps=float(1e-5 if model.norm_eps is None else model.norm_eps),
        rope_theta=float(10000.0 if model.rope_theta is None else model.rope_theta),
        tie_embeddings=bool(tied),
        rope_style=model.rope_style or "halves",
        family=fam.name,
    )
    return ModelConfig(**(fields | extra | overrides))


def _stated_head_dim(model, model_file, extra: dict) -> int:
    """The spec's `head_dim`; a GGUF file's heads (its key_length, or hidden / heads) must
    be that wide (a safetensors file states no widths: its tensors' shapes are checked)."""
    if model_file is not None and model.weights.kind == "gguf":
        has = extra.get("key_length") or model.hidden // model.heads
        if has != model.stated_head_dim:
            raise CkeError(
                f"head_dim {model.stated_head_dim} disagrees with {model_file.path}, whose heads are "
                f"{has} wide",
                loc=model.key_locs.get("head_dim", model.loc),
                hint=f"remove 'head_dim' from model {model.name} or make it match the file",
            )
    return model.stated_head_dim
