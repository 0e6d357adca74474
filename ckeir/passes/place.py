"""place: give every op a rank, per phase, and cut each phase's program into one per rank.

Requires: shape-infer (types), the llama builder's `layer` tags, and the schedule + cluster
in `ctx.options` ("schedule", "cluster"); runs once (a module whose funcs carry `rank` is
refused), and every stage gets at least one layer, head group and FFN block.  Ranks are the cluster's nodes that any phase uses,
in declaration order.  A phase is a list of stages (layer ranges); a stage of k nodes is
tensor parallel: attention splits by key/value-head groups (with their query heads), the FFN
column-then-row by whole reduction chunks, the LM head by vocabulary; shares follow the nodes'
resources (DRAM bandwidth for decode, cores for prefill) segment by segment: every
collective waits for the stage's slowest rank, so a token costs the sum over the segments
between collectives (attention, FFN, LM head) of the slowest rank's time, and each segment is
shared by the speeds alone (whole key/value heads round unevenly; the FFN does not make up for
them, since it is a segment of its own).  Several stages make a pipeline:
the embedding lives on the first, the final norm and LM head on the last.  `auto` phases
take the candidate with the lowest predicted latency that fits every node's memory.

For each (phase, rank) the pass clones the phase program, keeps the ops the rank owns,
shrinks sharded weights (`shard = array<i64: row0, row1, col0, col1>` of the full tensor),
and turns every value that comes from another stage into a `dist.recv` (the producer gets the
matching `dist.send`): a graph cut always needs that pair.  Matmuls whose outputs are partial
sums (`tp = "partial"`) or vocabulary slices (`tp = "vocab"`) are left for
insert-collectives.  Records `ctx.artifacts["placement"]`.

Canonical K reductions: every matmul tensor parallelism may split along K (attention output,
FFN down) that computes on int8 activations gets `k_chunk = C` in every program, one rank or
many: its kernel sums K in chunks of C and folds the chunk sums in K order, and each rank's
shard is whole chunks (C = head_dim for the attention output, `ffn_unit` for the FFN), so the
ranks' chunk sums folded in K order by the all-reduce are the single-rank sum, bit for bit.
"""

from __future__ import annotations

import attrs

from ckeir.errors import PassError
from ckeir.formats import FFN_SHARD_UNIT, FORMATS, split_unit
from ckeir.ir.attributes import to_attr
from ckeir.ir.core import Operation, OpResult, Rewriter, clone
from ckeir.ir.types import (
    MemRefType,
    ShapedType,
    TensorType,
    element_format,
)
from ckeir.passes.manager import Pass, PassContext, funcs, register_pass
from ckeir.passes.shape_infer import require_ranked, retype
from ckeir.planner import cost
from ckeir.planner.predict import check_memory, fits, predict

FFN_UNIT = FFN_SHARD_UNIT  # FFN shards are whole quantization blocks ...
FFN_CHUNKS = (512, 256, 128, 64)  # ... and whole reduction chunks: the first of these (whole
# blocks of ffn_down as stored) that cuts the FFN into a multiple of every stage size
# 2..max(kv_heads, 2) (equal nodes get equal shares: SmolLM2's 1536 over 2 nodes is
# 768 + 768, six chunks of 256, where 512 could only give 512 + 1024), else the first that
# cuts it into at least that many chunks (a stage has at most kv_heads nodes, or two sharing
# one key/value head); 512 and 256 are whole VNNI groups of q4 blocks (4 x 32 values each)
SPLIT_ALONG_K = ("attn_output", "ffn_down")


@attrs.frozen
class StagePlan:
    index: int
    nodes: tuple[str, ...]
    ranks: tuple[int, ...]
    first: int
    last: int
    kv_heads: tuple[tuple[int, int], ...]  # per rank [kv0, kv1)
    ffn: tuple[tuple[int, int], ...]  # per rank [f0, f1)
    vocab: tuple[tuple[int, int], ...]  # per rank [v0, v1) of the LM head
    # per rank [h0, h1) of the query heads: its key/value heads' groups, or, where the
    # stage has more nodes than key/value heads, a share of one group (its key/value head
    # then held by every rank of the group); () for whole groups
    heads: tuple[tuple[int, int], ...] = ()

    def query_heads(self, j: int, group: int) -> tuple[int, int]:
        """Rank j's query heads, `group` of them per key/value head."""
        if self.heads:
            return self.heads[j]
        kv0, kv1 = self.kv_heads[j]
        return kv0 * group, kv1 * group

    @property
    def replicated(self) -> bool:
        """Whether ranks of the stage hold the same key/value heads (each a copy)."""
        return len(set(self.kv_heads)) < len(self.kv_heads)


@attrs.frozen
class PhasePlan:
    phase: str
    stages: tuple[StagePlan, ...]
    auto: bool = False
    why: str = ""
    candidates: tuple[tuple[str, float, bool], ...] = ()  # (description, latency s, fits)

    def stage_of(self, rank: int) -> StagePlan | None:
        return next((s for s in self.stages if rank in s.ranks), None)

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(r for s in self.stages for r in s.ranks)

    def describe(self) -> str:
        return " | ".join(
            f"{'[' + ', '.join(s.nodes) + ']' if len(s.nodes) > 1 else s.nodes[0]} "
            f"layers {s.first}..{s.last}"
            for s in self.stages
        )


@attrs.frozen
class ColumnSplit:
    """Of the matrices of one kind a tensor-parallel stage splits along K (attn_output,
    ffn_down), the one whose stored blocks are widest: every column shard is whole blocks of
    `unit` elements (`formats.split_unit`)."""

    name: str
    format: str
    unit: int = FFN_SHARD_UNIT

    def describe(self) -> str:
        return f"{self.name} ({self.format}: blocks of {self.unit} along K)"


@attrs.frozen
class Shape:
    """The model dimensions place needs, read from the IR."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    # bytes a weight element takes in the layers' matmuls and in the LM head (their formats:
    # SmolLM2's Q4_1 layers 0.625, its Q8_0 head 1.0625); they weigh the shares' work
    layer_bytes: float = 1.0
    head_bytes: float = 1.0
    attn_split: ColumnSplit = ColumnSplit("attn_output", "f32")
    ffn_split: ColumnSplit = ColumnSplit("ffn_down", "f32")

    @property
    def ffn_unit(self) -> int:
        """The FFN's split unit and reduction chunk (see FFN_CHUNKS; whole blocks of ffn_down
        as stored, the widest when none fits: a K-quant's 256)."""
        block = self.ffn_split.unit
        most = max(self.kv_heads, 2)  # nodes a stage has at most: one per key/value head, or
        # (fewer heads) two sharing one, as for Gemma 3 270M
        fit = [
            c for c in FFN_CHUNKS if c % block == 0 and self.ffn % c == 0 and self.ffn // c >= most
        ]
        even = (c for c in fit if all((self.ffn // c) % k == 0 for k in range(2, most + 1)))
        return next(even, fit[0] if fit else max(block, FFN_UNIT))

    @property
    def head_chunk(self) -> int:
        """The attention output's reduction chunk: one query head's columns (a stage's
        share, whole key/value heads with their query heads, is whole heads)."""
        return self.head_dim

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.kv_heads

    def k_chunk(self, kind: str) -> int:
        return self.head_chunk if kind == "attn_output" else self.ffn_unit


def model_shape(func: Operation) -> Shape:
    """The dimensions of a llama-shaped program; a PassError naming what is missing when the
    func is not one (IR given to `ckec opt` can be anything that verifies)."""
    ops = func.regions[0].entry.ops
    name = func.attr("sym_name")

    def first(what: str, pred) -> Operation:
        op = next((op for op in ops if pred(op)), None)
        if op is None:
            raise PassError(f"place: func {name} has no {what}: place cuts llama programs")
        return op

    att = first("cke.attention", lambda op: op.name == "cke.attention")
    gate = first(
        "ffn_gate weight",
        lambda op: op.name == "cke.weight" and op.attr("name").endswith("ffn_gate.weight"),
    )
    first("cke.matmul", lambda op: op.name == "cke.matmul")
    head = [op for op in ops if op.name == "cke.matmul"][-1]
    require_ranked(func, "place")
    layers = sorted({op.attr("layer") for op in ops if op.attr("layer") is not None})
    if layers != list(range(len(layers))):
        raise PassError(f"place: func {name}'s layers are not numbered 0..{len(layers) - 1}")
    return Shape(
        len(layers),
        att.attr("heads"),
        att.attr("kv_heads"),
        att.attr("head_dim"),
        gate.results[0].type.shape[0],
        head.operands[1].type.shape[0],
        _element_bytes(gate.results[0].type),
        _element_bytes(head.operands[1].type),
        _widest_blocks(ops, "attn_output", least=1),
        _widest_blocks(ops, "ffn_down"),
    )


def _widest_blocks(ops, kind: str, least: int = FFN_SHARD_UNIT) -> ColumnSplit:
    """The `kind` weight whose stored blocks are widest along K (the first such: a Q4_K_M
    file mixes Q4_K and Q6_K, both 256 wide), its unit never under `least` elements (the FFN's
    shard unit; attention splits by heads, and float weights there by any head width)."""
    found = None
    for op in ops:
        if op.name == "cke.weight" and _layer_weight_kind(op.attr("name") or "") == kind:
            fmt = element_format(op.results[0].type.element)
            unit = split_unit(fmt, least)
            if found is None or unit > found.unit:
                found = ColumnSplit(op.attr("name"), fmt.name, unit)
    return found or ColumnSplit(kind, "f32", least)


def _element_bytes(t: ShapedType) -> float:
    fmt = element_format(t.element)
    return fmt.block_bytes / fmt.block


# --- choosing the plan ----------------------------------------------------------------------


def make_stage(
    index, nodes, ranks, first, last, shape: Shape, speed: list[float], loc=None
) -> StagePlan:
    """The shares of a stage on `nodes`; a PassError at `loc` (the stage's line) when the
    model cannot be split over them in whole heads and whole stored blocks."""
    k = len(nodes)
    if k == 1:
        whole = lambda n: ((0, n),)  # noqa: E731
        return StagePlan(
            index,
            tuple(nodes),
            tuple(ranks),
            first,
            last,
            whole(shape.kv_heads),
            whole(shape.ffn),
            whole(shape.vocab),
        )
    where = f"stage [{', '.join(nodes)}]"
    kv, heads = _attention_shares(shape, speed, where, loc)
    _check_whole_blocks(
        shape, heads or [(a * shape.group, b * shape.group) for a, b in kv], where, loc
    )
    unit = shape.ffn_unit
    if shape.ffn % unit or shape.ffn // unit < k:
        raise PassError(
            f"{where}: FFN width {shape.ffn} cannot be split into {k} shards of whole "
            f"{unit}-column chunks (the blocks of {shape.ffn_split.describe()})",
            loc=loc,
            hint="use fewer nodes in this stage, or split the layers into pipeline stages",
        )
    # each segment between two collectives by the speeds alone (see the module docstring)
    ffn = _ranges(cost.share(shape.ffn, speed, unit))
    if not cost.fits_shares(shape.vocab, k):
        raise PassError(
            f"stage [{', '.join(nodes)}]: a vocab of {shape.vocab} has fewer rows "
            f"than the stage's {k} nodes"
        )
    vocab = _ranges(cost.share(shape.vocab, speed))
    return StagePlan(index, tuple(nodes), tuple(ranks), first, last, kv, ffn, vocab, heads)


def _attention_shares(shape: Shape, speed: list[float], where: str, loc) -> tuple:
    """(key/value heads, query heads) per rank: whole key/value heads with their query heads
    when the stage has at most kv_heads nodes (query heads `()`: whole groups); otherwise each
    key/value head on kv_heads-th of the nodes, held by each of them, its query heads shared
    among them (Gemma 3 270M's one key/value head and four query heads over two nodes: two
    query heads each)."""
    k, kv_heads, g = len(speed), shape.kv_heads, shape.group
    if k <= kv_heads:
        return _ranges(cost.share(kv_heads, speed)), ()
    per = k // kv_heads
    if k % kv_heads or g < per:
        raise PassError(
            f"{where} has {k} nodes but the model has {kv_heads} key/value "
            f"head{'s' if kv_heads > 1 else ''} of {g} query heads each: tensor parallelism "
            "gives each node whole key/value heads, or an equal number of nodes to each "
            "key/value head and at least one of its query heads to each",
            loc=loc,
            hint="use fewer nodes in this stage, or split the layers into pipeline stages",
        )
    kv, heads = [], []
    for h in range(kv_heads):
        for q0, q1 in _ranges(cost.share(g, speed[h * per : (h + 1) * per])):
            kv.append((h, h + 1))
            heads.append((h * g + q0, h * g + q1))
    return tuple(kv), tuple(heads)


def _check_whole_blocks(shape: Shape, heads, where: str, loc) -> None:
    """Each rank's query heads are columns of attn_output (split along K): they must be whole
    blocks of it as stored (a K-quant's 256-wide super-blocks cannot be cut)."""
    split, hd = shape.attn_split, shape.head_dim
    for h0, h1 in heads:
        if (h0 * hd) % split.unit or (h1 * hd) % split.unit:
            raise PassError(
                f"{where}: a node's query heads {h0}..{h1 - 1} are columns "
                f"{h0 * hd}..{h1 * hd} of {split.describe()}, which cuts its blocks: "
                "tensor parallelism splits the attention output along K in whole blocks",
                loc=loc,
                hint=(
                    f"split the layers into pipeline stages, or store {split.name} in a "
                    "32-wide type (e.g. `quantize weights q8_0`)"
                    if split.unit > 32
                    else "split the layers into pipeline stages, or give the stage nodes "
                    "whose query heads are whole blocks of 32 columns"
                ),
            )


def _ranges(sizes: list[int]) -> tuple[tuple[int, int], ...]:
    out, at = [], 0
    for s in sizes:
        out.append((at, at + s))
        at += s
    return tuple(out)


def _speed(node: cost.NodeModel, phase: str) -> float:
    return node.dram_bw if phase == "decode" else float(node.cores)


def plan_from_stages(phase: str, stages, rank_of, nodes, shape: Shape, locs=()) -> PhasePlan:
    """The plan of stages (names, first, last); `locs`: their lines in the spec, if any."""
    plans = []
    for i, (names, first, last) in enumerate(stages):
        speed = [_speed(nodes[n], phase) for n in names]
        loc = locs[i] if i < len(locs) else None
        ranks = [rank_of[n] for n in names]
        plans.append(make_stage(i, names, ranks, first, last, shape, speed, loc))
    return PhasePlan(phase, tuple(plans))


def split_layers(n_layers: int, names: list[str], nodes, phase: str) -> list[tuple]:
    """Pipeline stages with layer counts proportional to the nodes' speed."""
    if not cost.fits_shares(n_layers, len(names)):
        raise PassError(
            f"phase {phase}: {n_layers} layers cannot make a pipeline over {len(names)} nodes "
            "(each stage needs a layer)"
        )
    sizes = cost.share(n_layers, [_speed(nodes[n], phase) for n in names])
    out, at = [], 0
    for name, s in zip(names, sizes, strict=True):
        out.append(((name,), at, at + s - 1))
        at += s
    return out


# --- cutting the program --------------------------------------------------------------------


def _owner_stage(op: Operation, plan: PhasePlan, pre_end: int, post_start: int, i: int) -> int:
    layer = op.attr("layer")
    if layer is not None:
        return next(s.index for s in plan.stages if s.first <= layer <= s.last)
    return 0 if i < pre_end else len(plan.stages) - 1


def owners(block, plan: PhasePlan) -> dict[Operation, int | None]:
    """The stage that runs each op of a phase program (None for weights: a weight belongs to
    the stages that use it)."""
    ops = list(block.ops)
    tagged = [
        i for i, op in enumerate(ops) if op.attr("layer") is not None and op.name != "cke.weight"
    ]
    pre_end, post_start = tagged[0], tagged[-1] + 1
    owner = {
        op: None if op.name == "cke.weight" else _owner_stage(op, plan, pre_end, post_start, i)
        for i, op in enumerate(ops)
    }
    _check_forward(ops, owner)
    return owner


def _check_forward(ops, owner: dict) -> None:
    """Values flow from a stage to itself or later ones, never back: a stage receives only
    from the one before.  An op among a layer's ops without its `layer` (IR from text) would
    otherwise belong to the last stage and feed an earlier one."""
    for op in ops:
        if owner[op] is None:
            continue
        for r in op.results:
            for user, _ in r.uses:
                if owner.get(user) is not None and owner[user] < owner[op]:
                    layer = op.attr("layer")
                    why = "no `layer`" if layer is None else f"layer {layer}"
                    raise PassError(
                        f"place: {op.name} ({why}, stage {owner[op]}) feeds {user.name} of "
                        f"the earlier stage {owner[user]}: every op among a layer's ops "
                        "needs that layer, and layers must come in order",
                        loc=op.loc,
                    )


def crossings(block, plan: PhasePlan) -> list[tuple[OpResult, list[tuple[Operation, int]]]]:
    """Where the plan cuts the program: each value a later stage uses, with those uses
    (user, operand index).  Each one is a dist.send / dist.recv pair per later rank."""
    owner = owners(block, plan)
    term = block.terminator
    out = []
    for op in block.ops:
        if owner[op] is None or op is term:
            continue
        for r in op.results:
            later = [
                (u, i)
                for u, i in r.uses
                if u is not term and owner.get(u) is not None and owner[u] > owner[op]
            ]
            if later:
                out.append((r, later))
    return out


def transfer_format(t: ShapedType, transfer: str) -> str:
    """How a value of type `t` crosses ranks under `quantize transfers <transfer>`: Q8_0
    blocks when its rows are whole blocks, else f32."""
    if transfer != "f32" and t.shape[-1] % FORMATS[transfer].block == 0:
        return transfer
    return "f32"


def round_transfers(func: Operation, plan: PhasePlan, transfer: str, rw: Rewriter) -> None:
    """The single-rank twin's side of `quantize transfers`: every value the distributed plan
    sends to a later stage in `transfer` format is rounded there (`cke.requant`), for the
    later stages' uses only — exactly the values the receiving ranks compute with."""
    for r, later in crossings(func.regions[0].entry, plan):
        fmt = transfer_format(r.type, transfer)
        if fmt == "f32":
            continue
        requant = Operation("cke.requant", [r], [r.type], {"format": fmt})
        rw.insert_after(r.op, requant)
        for user, i in later:
            rw.set_operand(user, i, requant.results[0])


def rank_program(
    func: Operation, plan: PhasePlan, rank: int, shape: Shape, transfer: str = "f32"
) -> Operation:
    """The part of `func` that `rank` runs, with its shards, boundary recvs and sends
    (activations cross as `transfer`: f32, or Q8_0 blocks when rows are whole blocks)."""
    new = clone(func)
    block = new.regions[0].entry
    stage = plan.stage_of(rank)
    owner = owners(block, plan)
    rw = Rewriter()
    lead = {s.index: s.ranks[0] for s in plan.stages}
    term = block.terminator

    # at each cut, values from an earlier stage arrive by dist.recv; the stage's lead sends
    # what it produces to every rank of each later stage that uses it
    for r, later in crossings(block, plan):
        op = r.op
        if owner[op] != stage.index and any(owner[u] == stage.index for u, _ in later):
            recv = Operation(
                "dist.recv",
                result_types=[r.type],
                attributes={"peer": lead[owner[op]], **_msg(r.type, func, transfer)},
            )
            rw.insert_before(op, recv)
            rw.replace(op, [recv.results[0]])
        elif owner[op] == stage.index and rank == stage.ranks[0]:
            at = op
            for s in sorted({owner[u] for u, _ in later}):
                for peer in plan.stages[s].ranks:
                    send = Operation(
                        "dist.send", [r], attributes={"peer": peer, **_msg(r.type, func, transfer)}
                    )
                    at = rw.insert_after(at, send)
    # drop what other stages run (users first)
    last_stage = len(plan.stages) - 1
    if stage.index != last_stage:
        rw.erase(term)
        term = rw.insert_after(block.ops[-1], Operation("cke.return"))
    others = {
        op
        for op in block.ops
        if op is not term
        and not op.name.startswith("dist.")
        and owner.get(op) is not None
        and owner[op] != stage.index
    }
    unused = {  # weights only other stages use
        op
        for op in block.ops
        if op.name == "cke.weight"
        and owner.get(op) is None
        and all(user in others for user, _ in op.results[0].uses)
    }
    rw.erase_all(others | unused)
    _shard(new, stage, stage.ranks.index(rank), shape, rw)
    placed = {
        "sym_name": f"{func.attr('sym_name')}_r{rank}"
        if len(plan.ranks) > 1
        else func.attr("sym_name"),
        "rank": rank,
        "stage": stage.index,
        "layers": (stage.first, stage.last),
        "group": tuple(stage.ranks),
    }
    for name, value in placed.items():
        rw.set_attr(new, name, value)
    retype(new)
    return new


def _msg(t: ShapedType, func: Operation, transfer: str) -> dict:
    """A message's attributes: its wire bytes (rows at the func's bound) and, when the value
    travels as Q8_0 blocks, its `format`."""
    fmt = transfer_format(t, transfer)
    wire = {"bytes": cost.message_bytes(t, fmt, func.attr("max_tokens", 1))}
    return wire if fmt == "f32" else {**wire, "format": fmt}


def _shard(func: Operation, stage: StagePlan, j: int, shape: Shape, rw: Rewriter) -> None:
    """Shrink this rank's weights, attention heads and KV caches to its share."""
    if len(stage.ranks) == 1:
        return
    hd = shape.head_dim
    kv0, kv1 = stage.kv_heads[j]
    h0, h1 = stage.query_heads(j, shape.group)
    f0, f1 = stage.ffn[j]
    v0, v1 = stage.vocab[j]
    rows = {
        "attn_q": (h0 * hd, h1 * hd),
        "attn_k": (kv0 * hd, kv1 * hd),
        "attn_v": (kv0 * hd, kv1 * hd),
        "ffn_gate": (f0, f1),
        "ffn_up": (f0, f1),
    }
    cols = {"attn_output": (h0 * hd, h1 * hd), "ffn_down": (f0, f1)}
    block = func.regions[0].entry
    matmuls = [op for op in block.ops if op.name == "cke.matmul"]
    head = (
        matmuls[-1]
        if stage.last == shape.layers - 1 and matmuls and matmuls[-1].attr("layer") is None
        else None
    )
    for op in list(block.ops):
        if op.name == "cke.matmul" and op is head:
            w = op.operands[1].op
            sliced = _weight_slice(w, (v0, v1), None, rw)
            rw.set_operand(op, 1, sliced.results[0])
            if not w.results[0].uses:
                rw.erase(w)
            rw.set_attr(op, "tp", "vocab")
            rw.set_attr(op, "vocab_slice", (v0, v1, shape.vocab))
            rw.set_attr(op, "vocab_bounds", tuple(b for b, _ in stage.vocab) + (shape.vocab,))
            continue
        if op.name != "cke.weight" or op.attr("layer") is None:
            continue
        kind = _layer_weight_kind(op.attr("name"))
        if kind in rows:
            _weight_slice(op, rows[kind], None, rw, in_place=True)
        elif kind in cols:
            _weight_slice(op, None, cols[kind], rw, in_place=True)
            for user, _ in op.results[0].uses:
                rw.set_attr(user, "tp", "partial")
    for op in block.ops:
        if op.name == "cke.attention":
            rw.set_attr(op, "heads", h1 - h0)
            rw.set_attr(op, "kv_heads", kv1 - kv0)
    for arg in block.args[2:4]:
        t = arg.type
        rw.set_arg_type(arg, MemRefType((t.shape[0], t.shape[1], (kv1 - kv0) * hd), t.element))


def chunk_reductions(func: Operation, shape: Shape, rw: Rewriter) -> None:
    """`k_chunk` on the matmuls a stage may split along K, where their kernel sums int8
    products (the float kernels keep one reduction over K; see the module docstring)."""
    for op in func.regions[0].entry.ops:
        if op.name != "cke.matmul" or op.attr("act") != "q8_0":
            continue
        w = op.operands[1].op
        kind = _layer_weight_kind(w.attr("name") or "") if w.name == "cke.weight" else None
        k = op.operands[1].type.shape[1]
        if kind in SPLIT_ALONG_K:
            chunk = shape.k_chunk(kind)
            if chunk % FFN_UNIT == 0 and k % chunk == 0 and chunk < k:
                rw.set_attr(op, "k_chunk", chunk)


def _layer_weight_kind(name: str) -> str | None:
    """`attn_q` of `blk.3.attn_q.weight` (None for a name of another form)."""
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[0] == "blk" else None


def _weight_slice(op: Operation, rows, cols, rw: Rewriter, in_place: bool = False) -> Operation:
    """Restrict a weight op to rows [r0, r1) and/or columns [c0, c1) of the full tensor."""
    full = tuple(op.attr("shape"))
    r0, r1 = rows or (0, full[0])
    c0, c1 = cols or (0, full[1])
    elt = op.results[0].type.element
    fmt = element_format(elt)
    if fmt.quantized and (c0 % fmt.block or c1 % fmt.block):
        raise PassError(
            f"place: weight {op.attr('name')} columns {c0}..{c1} do not fall on "
            f"{fmt.name} block boundaries"
        )
    sliced = TensorType((r1 - r0, c1 - c0), elt)
    if in_place:
        rw.set_attr(op, "shard", (r0, r1, c0, c1))
        rw.set_attr(op, "shape", sliced.shape)
        rw.set_result_type(op, 0, sliced)
        return op
    attributes = {
        **op.attributes,
        "shard": to_attr((r0, r1, c0, c1)),
        "shape": to_attr(sliced.shape),
    }
    return rw.insert_after(
        op, Operation("cke.weight", result_types=[sliced], attributes=attributes)
    )


@register_pass
class Place(Pass):
    name = "place"
    summary = "assign ops to ranks per phase (pipeline / tensor / hybrid / auto); shard weights"

    def apply(self, module: Operation, ctx: PassContext, rewriter: Rewriter) -> None:
        sched, cluster = ctx.options.get("schedule"), ctx.options.get("cluster")
        if sched is None or cluster is None:
            raise PassError(
                "place needs a schedule and a cluster (compile a spec, or give "
                "`ckec opt --spec FILE`)"
            )
        nodes = {n.name: cost.NodeModel.of(n) for n in cluster.nodes}
        originals = [f for f in funcs(module) if f.attr("rank") is None]
        if len(originals) < len(funcs(module)):
            raise PassError(
                "place: the module is already placed (its cke.func ops carry `rank`); run it once"
            )
        single = ctx.options.get("single_rank")  # everything on the first node: the
        # single-rank twin a distributed run's parity is checked against
        used = (
            [cluster.nodes[0].name]
            if single
            else _used_nodes(sched, cluster, [f.attr("phase") for f in originals])
        )
        rank_of = {n: i for i, n in enumerate(used)}
        placement = ctx.artifacts.setdefault("placement", {})
        transfer = getattr(sched, "transfer_format", None) or "f32"
        plans = {}
        for func in originals:
            phase = func.attr("phase")
            decl = None if single else sched.phases.get(phase)
            chunk_reductions(func, model_shape(func), rewriter)
            plans[func] = choose(decl, phase, model_shape(func), rank_of, nodes, func, ctx)
            if single and transfer != "f32":
                self._twin_rounding(func, sched, cluster, nodes, ctx, transfer, rewriter)
        # An auto phase may leave nodes idle: only nodes some phase uses become ranks.
        chosen = {n for plan in plans.values() for st in plan.stages for n in st.nodes}
        rank_of = {n: i for i, n in enumerate(n for n in used if n in chosen)}
        for func, plan in plans.items():
            phase, shape = func.attr("phase"), model_shape(func)
            plan = placement[phase] = _renumbered(plan, rank_of)
            _check_batch_stages(func, plan)
            for rank in plan.ranks:
                rewriter.insert_before(func, rank_program(func, plan, rank, shape, transfer))
            rewriter.erase(func)
        _check_shared_kv_handoff(placement)
        ctx.artifacts["ranks"] = {r: n for n, r in rank_of.items()}
        check_memory(module, ctx.artifacts["ranks"], nodes, sched)

    @staticmethod
    def _twin_rounding(func, sched, cluster, nodes, ctx, transfer, rewriter) -> None:
        """Round, in the single-rank twin, what the distributed plan of the func's phase
        would send between stages (see `round_transfers`)."""
        phase = func.attr("phase")
        used = _used_nodes(sched, cluster, [phase])
        rank_of = {n: i for i, n in enumerate(used)}
        shape = model_shape(func)
        plan = choose(sched.phases.get(phase), phase, shape, rank_of, nodes, func, ctx)
        round_transfers(func, plan, transfer, rewriter)


def _check_batch_stages(func: Operation, plan: PhasePlan) -> None:
    """A batched decode program (`slots`) runs on one rank or on pipeline stages of one rank
    each (micro-batches in flight); a tensor-parallel stage of it is not built yet."""
    slots = func.attr("slots")
    wide = [s for s in plan.stages if len(s.ranks) > 1]
    if slots is not None and wide:
        raise PassError(
            f"place: func {func.attr('sym_name')} decodes {slots} sequence slots a step, "
            f"but its phase puts stage [{', '.join(wide[0].nodes)}] on {len(wide[0].ranks)} "
            f"ranks ({plan.describe()}); batched programs run on stages of one rank each",
            loc=func.loc,
            hint="give each stage one node, or build the program with batch 1",
        )


def _check_shared_kv_handoff(placement: dict[str, PhasePlan]) -> None:
    """A key/value head several ranks hold (see `_attention_shares`) is written by each of
    them in prefill; handing a prefill's cache over to a decode placed otherwise moves each
    head from one owner to one owner, which would leave the other holders' copies empty."""
    pre, dec = placement.get("prefill"), placement.get("decode")
    held = lambda p: [(s.nodes, s.first, s.last, s.kv_heads) for s in p.stages]  # noqa: E731
    if pre is None or dec is None or held(pre) == held(dec):
        return
    shared = [s for p in (pre, dec) for s in p.stages if s.replicated]
    if shared:
        raise PassError(
            f"place: stage [{', '.join(shared[0].nodes)}] holds a key/value head on several "
            f"nodes, and phases prefill ({pre.describe()}) and decode ({dec.describe()}) "
            "place the layers differently: the KV cache cannot be handed over to several "
            "holders yet",
            hint="give phase prefill the stages of phase decode",
        )


def check_coverage(phase: str, stages, layers: int) -> None:
    """The stages take layers 0..layers-1 in order, each exactly once (the spec's checks
    compare with the spec's model; a program given to `ckec opt --spec` may differ)."""
    at = 0
    for _names, first, last in stages:
        if first != at or last < first:
            break
        at = last + 1
    else:
        if at == layers:
            return
    ranges = ", ".join(f"{first}..{last}" for _, first, last in stages)
    raise PassError(
        f"place: phase {phase}'s stages take layers {ranges}, but its program has layers "
        f"0..{layers - 1}: each must be taken once, in order"
    )


def _renumbered(plan: PhasePlan, rank_of: dict[str, int]) -> PhasePlan:
    """`plan` with its stages' ranks taken from `rank_of` (shards follow nodes, not ranks)."""
    stages = tuple(
        attrs.evolve(st, ranks=tuple(rank_of[n] for n in st.nodes)) for st in plan.stages
    )
    return attrs.evolve(plan, stages=stages)


def _used_nodes(sched, cluster, phases) -> list[str]:
    named = set()
    for p in phases:
        decl = sched.phases.get(p)
        if decl is None or decl.auto:
            named |= (
                {n.name for n in cluster.nodes} if decl is not None else {cluster.nodes[0].name}
            )
        else:
            named |= {n for s in decl.stages for n in s.nodes}
    return [n.name for n in cluster.nodes if n.name in named]


def choose(decl, phase, shape, rank_of, nodes, func, ctx) -> PhasePlan:
    if decl is None:
        first = next(iter(rank_of))
        return plan_from_stages(phase, [((first,), 0, shape.layers - 1)], rank_of, nodes, shape)
    if not decl.auto:
        stages = [
            (tuple(s.nodes), s.first, shape.layers - 1 if s.last is None else s.last)
            for s in decl.stages
        ]
        check_coverage(phase, stages, shape.layers)
        locs = [s.loc for s in decl.stages]
        return plan_from_stages(phase, stages, rank_of, nodes, shape, locs)
    return auto_plan(phase, shape, rank_of, nodes, func, ctx)


def auto_plan(phase, shape, rank_of, nodes, func, ctx):
    """Compare single-node, pipeline and tensor-parallel placements on the predicted
    latency; keep the fastest that fits in memory."""
    cluster = ctx.options["cluster"]
    names = list(rank_of)
    ranks = {r: n for n, r in rank_of.items()}
    last = shape.layers - 1
    candidates = [(f"{n} alone", [((n,), 0, last)]) for n in names]
    if 1 < len(names) <= shape.layers:  # a pipeline stage needs a layer
        candidates.append(
            ("pipeline over " + ", ".join(names), split_layers(shape.layers, names, nodes, phase))
        )
        if len(names) <= shape.kv_heads:
            candidates.append(
                ("tensor parallel over " + ", ".join(names), [(tuple(names), 0, last)])
            )
    tokens = func.attr("slots", 1) if phase == "decode" else func.attr("max_tokens", 1)
    results = []
    for desc, stages in candidates:
        try:
            plan = plan_from_stages(phase, stages, rank_of, nodes, shape)
        except PassError:
            continue
        programs = {r: rank_program(func, plan, r, shape) for r in plan.ranks}
        pred = predict(plan, programs, nodes, ranks, cluster, tokens, context=tokens)
        results.append((desc, plan, pred, fits(pred, nodes, ranks)))
    fitting = [r for r in results if r[3]]
    if not fitting:
        raise PassError(f"phase {phase}: no placement fits the nodes' memory")
    desc, plan, pred, _ = min(fitting, key=lambda r: r[2].latency)
    table = tuple((d, p.latency, f) for d, _, p, f in results)
    why = f"{desc}: lowest predicted latency ({pred.latency * 1e3:.3f} ms) that fits memory"
    return attrs.evolve(plan, auto=True, why=why, candidates=table)
