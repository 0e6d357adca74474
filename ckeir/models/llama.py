"""The llama graph: model hyper-parameters → a prefill or decode `cke.func`.

RMSNorm → Q/K/V projections → RoPE → grouped-query causal attention over the KV cache →
output projection → residual; RMSNorm → SwiGLU FFN → residual; final norm, LM head (tied to
the embedding table or not), argmax.  Weight names are GGUF's.  The builder leaves value
types unranked (`tensor<*xf32>`): the shape-infer pass types them from the weights' shapes.
"""

from __future__ import annotations

import attrs

from ckeir.ir.attributes import to_attr
from ckeir.ir.core import Block, Builder, Operation, Region, module_op
from ckeir.ir.types import DYN, MemRefType, TensorType, UnrankedTensorType, f32, i32, i64


@attrs.frozen
class LlamaConfig:
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

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter by GGUF name, as (rows, row length)."""
        d, f, q, kv = self.hidden, self.ffn, self.heads * self.head_dim, self.kv_dim
        shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (self.vocab, d)}
        for i in range(self.layers):
            p = f"blk.{i}."
            shapes |= {
                p + "attn_norm.weight": (d,),
                p + "attn_q.weight": (q, d),
                p + "attn_k.weight": (kv, d),
                p + "attn_v.weight": (kv, d),
                p + "attn_output.weight": (d, q),
                p + "ffn_norm.weight": (d,),
                p + "ffn_gate.weight": (f, d),
                p + "ffn_up.weight": (f, d),
                p + "ffn_down.weight": (d, f),
            }
        shapes["output_norm.weight"] = (d,)
        if not self.tie_embeddings:
            shapes["output.weight"] = (self.vocab, d)
        return shapes

    def cache_type(self, slots: int | None = None) -> MemRefType:
        """One sequence's KV cache (L x C x KVD), or `slots` of them, slot outermost."""
        shape = (self.layers, self.context, self.kv_dim)
        return MemRefType(shape if slots is None else (slots, *shape), f32)


def _inputs(cfg: LlamaConfig, phase: str, batch: int) -> Block:
    """The entry block: (ids, pos, kcache, vcache), and for a batched decode func per-row
    positions, caches of `batch` slots and each row's slot (ckeir.dialects.cke)."""
    if phase == "decode" and batch > 1:
        rows = TensorType((DYN,), i32)
        cache = cfg.cache_type(batch)
        return Block([rows, TensorType((DYN,), i64), cache, cache, rows])
    rows = DYN if phase == "prefill" else 1
    return Block([TensorType((rows,), i32), i64, cfg.cache_type(), cfg.cache_type()])


def build_program(
    cfg: LlamaConfig,
    phase: str,
    max_tokens: int | None = None,
    weight_types=None,
    batch: int = 1,
) -> Operation:
    """One `cke.func` for `phase` ('prefill': up to max_tokens rows of one sequence,
    'decode': one row, or with `batch` > 1 up to `batch` rows, each the last token of its own
    sequence).  `weight_types` gives the element type a weight is stored in (default f32)."""
    batched = phase == "decode" and batch > 1
    block = _inputs(cfg, phase, batch)
    ids, pos, kcache, vcache = block.args[:4]
    slots = block.args[4:]  # the batched func's slot of each row
    b = Builder(block)
    u = UnrankedTensorType(f32)
    shapes = cfg.weight_shapes()
    weights: dict[str, object] = {}

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

    x = b.value("cke.embed", [ids, w("token_embd.weight")], u)
    rope = dict(theta=float(cfg.rope_theta), head_dim=cfg.head_dim, style=cfg.rope_style)
    for layer in range(cfg.layers):
        first = len(block.ops)
        p = f"blk.{layer}."
        h = b.value("cke.rmsnorm", [x, w(p + "attn_norm.weight")], u, eps=float(cfg.norm_eps))
        q = b.value("cke.rope", [mm(h, p + "attn_q.weight"), pos], u, **rope)
        k = b.value("cke.rope", [mm(h, p + "attn_k.weight"), pos], u, **rope)
        v = mm(h, p + "attn_v.weight")
        a = b.value(
            "cke.attention",
            [q, k, v, kcache, vcache, pos, *slots],
            u,
            heads=cfg.heads,
            kv_heads=cfg.kv_heads,
            head_dim=cfg.head_dim,
            layer=layer,
        )
        x = b.value("cke.add", [x, mm(a, p + "attn_output.weight")], u)
        h = b.value("cke.rmsnorm", [x, w(p + "ffn_norm.weight")], u, eps=float(cfg.norm_eps))
        g = b.value("cke.silu_mul", [mm(h, p + "ffn_gate.weight"), mm(h, p + "ffn_up.weight")], u)
        x = b.value("cke.add", [x, mm(g, p + "ffn_down.weight")], u)
        for op in block.ops[first:]:  # every op of the layer says so: the unit of placement
            op.attributes["layer"] = to_attr(layer)
    if phase == "prefill":
        x = b.value("cke.last_token", [x], u)
    x = b.value("cke.rmsnorm", [x, w("output_norm.weight")], u, eps=float(cfg.norm_eps))
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
    cfg: LlamaConfig, phases=("prefill", "decode"), max_tokens=None, weight_types=None, batch=1
) -> Operation:
    """A module with one program per phase (decode for `batch` sequence slots)."""
    return module_op(build_program(cfg, ph, max_tokens, weight_types, batch) for ph in phases)
