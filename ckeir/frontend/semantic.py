"""Meaning of a parsed spec: defaults, `like` and `import` resolution, and every check
that the grammar cannot express, each failing with a located ``SpecError``.

Two levels of checking:

* ``check_declarations`` needs only one declaration at a time (keys present, numbers in
  range, heads dividing hidden, `like` inside a cluster, ...);
* ``resolve`` ties declarations together (`run M on C`, stage nodes in C, default phases,
  every layer covered exactly once).

``parse_spec`` does both for a self-contained text; ``load_spec`` reads a file and its
imports first.  When a model's layer count only comes from its weights file, the runtime
completes it later with ``with_model_params``, which re-runs the checks.
"""

from __future__ import annotations

import functools
import math
import os
import stat
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from pathlib import Path

import attrs

from ckeir import limits, units
from ckeir.errors import SourceLoc, SpecError
from ckeir.formats import FFN_SHARD_UNIT
from ckeir.frontend.ast import (
    ClusterDecl,
    ModelDecl,
    NodeDecl,
    PhaseDecl,
    ScheduleDecl,
    Spec,
    StageDecl,
)
from ckeir.frontend.parser import parse

KNOWN_FAMILIES = ("gemma3", "llama")  # one module each in ckeir/models (FAMILY)

# With random weights nothing can come from a file, so these must be stated.
REQUIRED_WITH_RANDOM_WEIGHTS = ("family", "vocab", "hidden", "layers", "heads", "ffn", "context")
RANDOM_DEFAULTS = {
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_embeddings": False,
    "rope_style": "halves",
}
# The largest sane value of each integer hyper-parameter (all are at least 1) and the range
# of each real one: checked before any of them sizes work or memory.
INT_LIMITS = {
    "vocab": limits.MAX_VOCAB,
    "hidden": limits.MAX_HIDDEN,
    "layers": limits.MAX_LAYERS,
    "heads": limits.MAX_HEADS,
    "kv_heads": limits.MAX_HEADS,
    "ffn": limits.MAX_FFN,
    "context": limits.MAX_CONTEXT,
    "window": limits.MAX_CONTEXT,
}
REAL_LIMITS = {
    "norm_eps": (limits.MIN_NORM_EPS, limits.MAX_NORM_EPS),
    "rope_theta": (limits.MIN_ROPE_THETA, limits.MAX_ROPE_THETA),
}
ROPE_STYLES = ("interleaved", "halves")


# ---- entry points ---------------------------------------------------------------------


def parse_spec(text: str, filename: str = "<string>") -> Spec:
    """Parse and check one file's text.  A text without imports is the whole world and is
    fully resolved; with imports, names and layer coverage wait for ``load_spec``."""
    spec = check_declarations(parse(text, filename))
    return spec if spec.imports else resolve(spec)


def load_spec(path: str | Path) -> Spec:
    """Read a spec file and, recursively, the files it imports; check and resolve it all.
    The file's own declarations come first, then imported ones in import order."""
    path = Path(path)
    identity = _file_identity(path, importer=None)
    own = _read_spec(path, importer=None)
    decls = list(own.declarations)
    _collect_imports(own, path, decls, chain=[(identity, path)], done={identity})
    return resolve(Spec.from_declarations(str(path), decls, own.imports))


def with_model_params(spec: Spec, model: str, params: Mapping[str, object], source: str) -> Spec:
    """Complete a model with hyper-parameters read from its weights file (``source`` names
    the file in messages).  A value the spec states must agree, but for a context no longer
    than the file's (the KV cache is sized by it); the model and the schedules that run it
    are then checked again, including layer coverage."""
    decl = spec.models[model]
    unknown = set(params) - set(ModelDecl.PARAMS)
    if unknown:
        raise ValueError(f"not model hyper-parameters: {sorted(unknown)}")
    for key, value in params.items():
        stated = getattr(decl, key)
        if key == "context" and stated is not None and stated <= value:
            continue  # a shorter context than the file's is the user's choice: it sizes the cache
        if stated is not None and not _same(stated, value):
            raise SpecError(
                f"{key} {_show(stated)} disagrees with {source}, which has {_show(value)}",
                loc=decl.key_locs.get(key, decl.loc),
                hint=f"remove '{key}' from model {model} or make it match the file",
            )
    known = {k: v for k, v in params.items() if getattr(decl, k) is None}
    completed = check_model(attrs.evolve(decl, **known))
    return resolve(attrs.evolve(spec, models={**spec.models, model: completed}))


def check_layer_coverage(schedule: ScheduleDecl, n_layers: int) -> None:
    """Every layer 0..n_layers-1 belongs to exactly one stage of each non-auto phase.

    Ranges are compared as intervals, never expanded into layers: `layers 4..2**63` costs no
    more than `layers 4..5`."""
    for phase in schedule.phases.values():
        if phase.auto:
            continue
        spans = [(s.first, n_layers - 1 if s.last is None else s.last, s) for s in phase.stages]
        for first, last, stage in spans:
            if last >= n_layers:
                raise SpecError(
                    f"{_layers([(max(first, n_layers), last)], 'does', 'do')} not exist: model "
                    f"{schedule.model} has {n_layers} layers (0..{n_layers - 1})",
                    loc=stage.loc,
                )
        _check_no_overlap(phase, spans)
        gaps = _gaps(spans, n_layers)
        if gaps:
            raise SpecError(
                f"{_layers(gaps, 'belongs', 'belong')} to no stage of phase {phase.name}",
                loc=phase.loc,
                hint=f"the stages must cover layers 0..{n_layers - 1} exactly once",
            )


def _check_no_overlap(phase: PhaseDecl, spans: list[tuple[int, int, StageDecl]]) -> None:
    """Sorted by first layer, a stage overlaps another iff it starts at or before the
    furthest last layer seen so far; of the two, the stage written later is in error."""
    reach: int | None = None  # the index of the span reaching furthest so far
    for i in sorted(range(len(spans)), key=lambda i: spans[i][0]):
        first, last, _ = spans[i]
        if reach is not None and first <= spans[reach][1]:
            both = (first, min(last, spans[reach][1]))  # spans[reach] starts at or before first
            other = spans[min(i, reach)][2].loc
            raise SpecError(
                f"{_layers([both], 'belongs', 'belong')} to another stage of phase "
                f"{phase.name} too",
                loc=spans[max(i, reach)][2].loc,
                hint=f"the other stage is at line {other.line}" if other else None,
            )
        if reach is None or last > spans[reach][1]:
            reach = i


def _gaps(spans: list[tuple[int, int, StageDecl]], n_layers: int) -> list[tuple[int, int]]:
    """The layers 0..n_layers-1 outside every span, as inclusive intervals."""
    gaps, next_free = [], 0
    for first, last, _ in sorted(spans, key=lambda t: t[0]):
        if first > next_free:
            gaps.append((next_free, first - 1))
        next_free = max(next_free, last + 1)
    return gaps + ([(next_free, n_layers - 1)] if next_free < n_layers else [])


def check_layer_bound(schedule: ScheduleDecl) -> None:
    """Before the layer count is known (it comes from a weights file), no stage may name a
    layer that no model could have."""
    top = limits.MAX_LAYERS - 1
    for phase in schedule.phases.values():
        for stage in phase.stages:
            if stage.last is not None and stage.last > top:
                raise SpecError(
                    f"{_layers([(max(stage.first, top + 1), stage.last)], 'does', 'do')} not "
                    f"exist: a model has at most {limits.MAX_LAYERS} layers",
                    loc=stage.loc,
                )


# ---- one declaration at a time --------------------------------------------------------


def check_declarations(spec: Spec) -> Spec:
    """Defaults and checks that need no other declaration."""
    return attrs.evolve(
        spec,
        models=_each(spec.models, check_model),
        clusters=_each(spec.clusters, check_cluster),
        schedules=_each(spec.schedules, check_schedule),
    )


def check_model(m: ModelDecl) -> ModelDecl:
    where = f"model {m.name}"
    if m.weights is None:
        raise SpecError(
            f"{where} says nothing about its weights",
            loc=m.loc,
            hint='add e.g. `weights random(seed = 0)` or `weights gguf("model.gguf")`',
        )
    if m.family is not None and m.family not in KNOWN_FAMILIES:
        raise SpecError(
            f"unknown model family '{m.family}'",
            loc=m.key_locs.get("family", m.loc),
            hint=f"known families: {', '.join(KNOWN_FAMILIES)}",
        )
    if m.weights.is_random:
        missing = [k for k in REQUIRED_WITH_RANDOM_WEIGHTS if getattr(m, k) is None]
        if missing:
            raise SpecError(
                f"{where} has random weights but no {_and(missing)}",
                loc=m.loc,
                hint="with random weights every size must be stated; a weights file could supply them",
            )
        defaults = {k: v for k, v in RANDOM_DEFAULTS.items() if getattr(m, k) is None}
        kv_heads = m.heads if m.kv_heads is None else m.kv_heads  # a stated 0 stays, refused
        m = attrs.evolve(m, kv_heads=kv_heads, **defaults)
    elif not m.weights.path:
        raise SpecError("the weights file name is empty", loc=m.weights.loc)

    def bad(key: str, message: str) -> SpecError:
        return SpecError(message, loc=m.key_locs.get(key, m.loc))

    _check_model_ranges(m, bad)
    stated = m.stated_head_dim is not None
    if not stated and m.hidden and m.heads and m.hidden % m.heads:
        raise bad("heads", f"heads {m.heads} does not divide hidden {m.hidden} in {where}")
    _check_head_size(m, bad, stated)
    if m.heads and m.kv_heads and m.heads % m.kv_heads:
        raise bad("kv_heads", f"kv_heads {m.kv_heads} does not divide heads {m.heads} in {where}")
    if m.window is not None and (m.family or "llama") == "llama":
        raise bad("window", f"{where}: family llama has no sliding-window layers")
    return m


def _check_head_size(m: ModelDecl, bad: Callable[[str, str], SpecError], stated: bool) -> None:
    """A head is an even number of lanes (RoPE turns pairs), and the query heads together
    (heads x head_dim: the width of attn_q's rows) stay within the widths ckeir builds."""
    hd, where = m.head_dim, f"model {m.name}"
    if hd is None:
        return
    if stated and not limits.in_int_range(hd, 1, limits.MAX_HIDDEN):
        raise bad(
            "head_dim", limits.range_message(f"head_dim of {where}", hd, 1, limits.MAX_HIDDEN)
        )
    what = f"head_dim {hd}" if stated else f"the head size hidden/heads = {hd}"
    if hd % 2:
        raise bad("head_dim" if stated else "heads", f"{what} must be even for RoPE")
    if m.heads and hd * m.heads > limits.MAX_HIDDEN:
        raise bad(
            "head_dim" if stated else "heads",
            f"{what} times {m.heads} heads is {hd * m.heads} query lanes in {where}, more "
            f"than the {limits.MAX_HIDDEN} ckeir builds",
        )


def _check_model_ranges(m: ModelDecl, bad: Callable[[str, str], SpecError]) -> None:
    """Each hyper-parameter has the type and range it must have: values may come from a
    weights file (``with_model_params``) as well as from the spec."""
    where = f"model {m.name}"
    for key, hi in INT_LIMITS.items():
        value = getattr(m, key)
        if value is not None and not limits.in_int_range(value, 1, hi):
            raise bad(key, limits.range_message(f"{key} of {where}", value, 1, hi))
    for key, (lo, hi) in REAL_LIMITS.items():
        value = getattr(m, key)
        if value is not None and not limits.in_real_range(value, lo, hi):
            raise bad(key, limits.range_message(f"{key} of {where}", value, lo, hi))
    if m.rope_style is not None and m.rope_style not in ROPE_STYLES:
        raise bad("rope_style", f"rope_style of {where} must be {' or '.join(ROPE_STYLES)}")
    if m.tie_embeddings is not None and not isinstance(m.tie_embeddings, bool):
        raise bad("tie_embeddings", f"tie_embeddings of {where} must be true or false")


def check_cluster(c: ClusterDecl) -> ClusterDecl:
    if not c.nodes:
        raise SpecError(
            f"cluster {c.name} has no node", loc=c.loc, hint="add e.g. `node n0 { ... }`"
        )
    if len(c.nodes) > limits.MAX_NODES:
        raise SpecError(
            f"cluster {c.name} has {len(c.nodes)} nodes, more than {limits.MAX_NODES}",
            loc=c.nodes[limits.MAX_NODES].loc,
        )
    by_name: dict[str, NodeDecl] = {}
    for node in c.nodes:
        if node.name in by_name:
            raise SpecError(
                f"node '{node.name}' is declared twice in cluster {c.name}",
                loc=node.loc,
                hint=f"the first declaration is at line {by_name[node.name].loc.line}",
            )
        by_name[node.name] = node
    copied: dict[str, NodeDecl] = {}
    nodes = tuple(_check_node(_like(n, by_name, c.name, copied)) for n in c.nodes)
    seen: dict[frozenset, object] = {}
    for link in c.links:
        for end in (link.a, link.b):
            if end not in by_name:
                raise _unknown_node(end, c, link.loc)
        if link.a == link.b:
            raise SpecError(f"link joins node {link.a} to itself", loc=link.loc)
        pair = frozenset((link.a, link.b))
        if pair in seen:
            raise SpecError(f"nodes {link.a} and {link.b} are linked twice", loc=link.loc)
        seen[pair] = link
        if link.bw is None or link.latency is None:
            missing = [k for k in ("bw", "latency") if getattr(link, k) is None]
            raise SpecError(f"link {link.a} <-> {link.b} has no {_and(missing)}", loc=link.loc)
    return attrs.evolve(c, nodes=nodes)


def _like(
    node: NodeDecl, by_name: dict[str, NodeDecl], cluster: str, copied: dict[str, NodeDecl]
) -> NodeDecl:
    """The node with the keys of the node it is `like` filled in (stated keys win).

    The chain of copies is walked without recursion (a cluster may chain thousands of
    nodes), and ``copied`` remembers finished nodes so that each chain is walked once."""
    chain, on_chain = [node], {node.name}
    while chain[-1].like is not None and chain[-1].name not in copied:
        here = chain[-1]
        if here.like not in by_name:
            known = ", ".join(by_name)
            raise SpecError(
                f"node '{here.like}' is not in cluster {cluster}",
                loc=here.key_locs["like"],
                hint=f"its nodes: {known}",
            )
        if here.like in on_chain:  # reported where the circle starts
            names = [n.name for n in chain]
            circle = names[names.index(here.like) :]
            start = by_name[here.like].key_locs["like"]
            raise SpecError(f"nodes copy each other in a circle: {' -> '.join(circle)}", loc=start)
        chain.append(by_name[here.like])
        on_chain.add(here.like)
    source = copied.get(chain[-1].name, chain[-1])
    for here in reversed(chain[:-1]):
        inherited = {k: getattr(source, k) for k in NodeDecl.RESOURCES if getattr(here, k) is None}
        source = copied[here.name] = attrs.evolve(here, **inherited)
    return source


def _check_node(node: NodeDecl) -> NodeDecl:
    missing = [k for k in NodeDecl.RESOURCES if getattr(node, k) is None]
    if missing:
        raise SpecError(
            f"node {node.name} has no {_and(missing)}",
            loc=node.loc,
            hint="state every resource, or copy another node with `like`",
        )
    # Sizes and rates were range-checked where they were read (ckeir/units).
    if not limits.in_int_range(node.cores, 1, limits.MAX_CORES):
        loc = node.key_locs.get("cores") or node.key_locs.get("like", node.loc)
        message = limits.range_message(
            f"cores of node {node.name}", node.cores, 1, limits.MAX_CORES
        )
        raise SpecError(message, loc=loc)
    return node


def check_schedule(s: ScheduleDecl) -> ScheduleDecl:
    if s.model is None:
        raise SpecError(
            f"schedule {s.name} does not say what to run",
            loc=s.loc,
            hint="add `run MODEL on CLUSTER`",
        )
    if s.batch is not None and not limits.in_int_range(s.batch, 1, limits.MAX_BATCH):
        message = limits.range_message("batch", s.batch, 1, limits.MAX_BATCH)
        raise SpecError(message, loc=s.key_locs["batch"])
    for phase in s.phases.values():
        _check_phase(phase)
    return attrs.evolve(
        s,
        weight_format=s.weight_format or "keep",
        transfer_format=s.transfer_format or "f32",
        activation_format=s.activation_format or "q8_0",
        batch=s.batch or 1,
    )


def _check_phase(phase: PhaseDecl) -> None:
    if phase.auto and phase.stages:
        raise SpecError(
            f"phase {phase.name} is both `auto` and staged",
            loc=phase.stages[0].loc,
            hint="write either `auto` or stage lines",
        )
    if not phase.auto and not phase.stages:
        raise SpecError(
            f"phase {phase.name} has no stage",
            loc=phase.loc,
            hint="write `auto` or lines such as `stage n0 layers 0..3`",
        )
    used: dict[str, StageDecl] = {}
    for stage in phase.stages:
        if stage.first > stage.last:
            raise SpecError(
                f"layer range {stage.first}..{stage.last} is empty",
                loc=stage.loc,
                hint="ranges are first..last, inclusive, with first <= last",
            )
        for node in stage.nodes:
            if node in used:
                where = "twice in this stage" if used[node] is stage else "in two stages"
                raise SpecError(f"node {node} appears {where} of phase {phase.name}", loc=stage.loc)
            used[node] = stage


# ---- across declarations --------------------------------------------------------------


def resolve(spec: Spec) -> Spec:
    """Tie schedules to their model and cluster: names must exist, stage nodes must be in the
    cluster, phases left out run on the cluster's first node, and when the model's layer
    count is known every phase covers each layer once."""
    return attrs.evolve(spec, schedules=_each(spec.schedules, lambda s: _resolve_schedule(spec, s)))


def _resolve_schedule(spec: Spec, s: ScheduleDecl) -> ScheduleDecl:
    model = _must_exist(spec.models, s.model, "model", s.key_locs.get("model", s.loc))
    cluster = _must_exist(spec.clusters, s.cluster, "cluster", s.key_locs.get("cluster", s.loc))
    for phase in s.phases.values():
        for stage in phase.stages:
            for node in stage.nodes:
                if node not in cluster.node_names:
                    raise _unknown_node(node, cluster, stage.loc)
    phases = {
        name: _default_phase(name, cluster, model, s.loc)
        if name not in s.phases or s.phases[name].defaulted
        else s.phases[name]
        for name in ScheduleDecl.PHASES
    }
    s = attrs.evolve(s, phases=phases)
    if model.layers is not None:
        check_layer_coverage(s, model.layers)
    else:
        check_layer_bound(s)
    _check_weight_except(s, model)
    _check_batch_placement(s, cluster)
    for phase in phases.values():
        for stage in phase.stages:
            _check_tensor_parallel(stage, model, cluster)
        if phase.auto:  # the planner may split the phase over every node
            _check_rate_skew(cluster.nodes, phase.loc, "the nodes of cluster " + cluster.name)
    return s


def _check_batch_placement(s: ScheduleDecl, cluster: ClusterDecl) -> None:
    """`batch N` > 1 decodes N sequences a step: on one rank, or over pipeline stages of one
    node each, which keep micro-batches of the N in flight.  A sequence's KV cache stays
    where its prefill wrote it, so prefill must have decode's stages; tensor-parallel stages
    and `auto` phases (the planner may choose tensor parallelism) are refused."""
    if (s.batch or 1) == 1:
        return
    nodes: list[str] = []
    auto = [p.name for p in s.phases.values() if p.auto]
    for phase in s.phases.values():
        names = [n.name for n in cluster.nodes] if phase.auto else list(phase.nodes)
        nodes += [n for n in names if n not in nodes]
    if len(nodes) == 1:
        return
    fail = functools.partial(SpecError, loc=s.key_locs["batch"])
    if auto:
        raise fail(
            f"batch {s.batch}: schedule {s.name} may run on {len(nodes)} ranks "
            f"({_and(nodes)}: phase {auto[0]} is auto); a batch over several ranks needs "
            "pipeline stages stated in every phase",
            hint="state the stages (one node each), run every phase on one node, or write "
            "`batch 1`",
        )
    for phase in s.phases.values():
        for stage in phase.stages:
            if len(stage.nodes) > 1:
                raise fail(
                    f"batch {s.batch}: phase {phase.name}'s stage [{', '.join(stage.nodes)}] "
                    "is tensor parallel; batched decoding runs on pipeline stages of one node "
                    "each (tensor-parallel batches are not built yet)",
                    hint=f"give each stage of phase {phase.name} one node, or write `batch 1`",
                )
    pre, dec = s.phases["prefill"], s.phases["decode"]
    if _stages(pre) != _stages(dec):
        raise fail(
            f"batch {s.batch}: phase prefill ({_describe(pre)}) and phase decode "
            f"({_describe(dec)}) place the layers differently; a batched sequence's KV cache "
            "stays on the ranks its prefill wrote it on, so both phases need the same stages",
            hint="give phase prefill the stages of phase decode, or write `batch 1`",
        )


def _stages(phase: PhaseDecl) -> list[tuple]:
    return [(st.nodes, st.first, st.last) for st in phase.stages]


def _describe(phase: PhaseDecl) -> str:
    return " | ".join(f"{', '.join(st.nodes)} layers {st.first}..{st.last}" for st in phase.stages)


def _default_phase(name: str, cluster: ClusterDecl, model: ModelDecl, loc: SourceLoc) -> PhaseDecl:
    last = model.layers - 1 if model.layers is not None else None
    stage = StageDecl((cluster.nodes[0].name,), 0, last, loc=loc)
    return PhaseDecl(name, (stage,), defaulted=True, loc=loc)


def _check_weight_except(s: ScheduleDecl, model: ModelDecl) -> None:
    """`except [name]` names a weight the model has: a misspelt name would silently quantize
    the weight it meant to keep."""
    known = model.weight_names()
    for name in s.weight_except:
        if name not in known:
            tied = name == "output" and model.tie_embeddings
            why = f"model {model.name} ties its output to token_embd" if tied else None
            raise SpecError(
                f"model {model.name} has no weight '{name}' to leave unquantized",
                loc=s.key_locs.get(f"except {name}", s.loc),
                hint=why or f"`except` can name {_and(list(known))}",
            )


def _check_tensor_parallel(stage: StageDecl, model: ModelDecl, cluster: ClusterDecl) -> None:
    """A stage on several nodes splits attention by key/value heads (or shares one's query
    heads) and the LM head by vocabulary rows: each node needs at least one of each, at
    comparable speeds."""
    k = len(stage.nodes)
    if k == 1:
        return
    kv_heads = model.kv_heads or model.heads
    if kv_heads is not None and model.heads is not None and k > kv_heads:
        _check_shared_heads(stage, model, kv_heads)
    if model.vocab is not None and model.vocab < k:
        entries = "entry" if model.vocab == 1 else "entries"
        raise SpecError(
            f"stage [{', '.join(stage.nodes)}] has {k} nodes but model {model.name} has "
            f"only {model.vocab} vocabulary {entries}: tensor parallelism gives each node at "
            "least one",
            loc=stage.loc,
            hint="use fewer nodes in this stage, or split the layers into pipeline stages",
        )
    unit = FFN_SHARD_UNIT
    if model.ffn is not None and (model.ffn % unit or model.ffn // unit < k):
        raise SpecError(
            f"stage [{', '.join(stage.nodes)}] has {k} nodes but the FFN width {model.ffn} of "
            f"model {model.name} is not {k} or more whole blocks of {unit}: tensor parallelism "
            "gives each node whole blocks of FFN rows",
            loc=stage.loc,
            hint="use fewer nodes in this stage, or split the layers into pipeline stages",
        )
    nodes = [cluster.node(n) for n in stage.nodes]
    _check_rate_skew(nodes, stage.loc, "the nodes of this stage")


def _check_shared_heads(stage: StageDecl, model: ModelDecl, kv_heads: int) -> None:
    """More nodes than key/value heads: each key/value head goes to as many nodes, each
    holding it and some of its query heads (as place shares them)."""
    k, group = len(stage.nodes), model.heads // kv_heads
    if k % kv_heads == 0 and group >= k // kv_heads:
        return
    raise SpecError(
        f"stage [{', '.join(stage.nodes)}] has {k} nodes but model {model.name} has "
        f"{kv_heads} key/value head{'s' if kv_heads > 1 else ''} of {group} query heads each: "
        "tensor parallelism gives each node whole key/value heads, or gives each key/value "
        "head the same number of nodes and each of them at least one of its query heads",
        loc=stage.loc,
        hint="use fewer nodes in this stage, or split the layers into pipeline stages",
    )


def _check_rate_skew(nodes, loc: SourceLoc | None, which: str) -> None:
    """Work is shared in proportion to memory bandwidth: past limits.MAX_RATE_SKEW the slow
    node's share rounds to nothing."""
    if len(nodes) < 2:
        return
    slow = min(nodes, key=lambda n: n.dram_bw)
    fast = max(nodes, key=lambda n: n.dram_bw)
    if fast.dram_bw > limits.MAX_RATE_SKEW * slow.dram_bw:
        raise SpecError(
            f"{which} differ too much in dram_bw: {fast.name} is "
            f"{fast.dram_bw / slow.dram_bw:.3g} times faster than {slow.name} "
            f"(at most {limits.MAX_RATE_SKEW:g})",
            loc=loc,
            hint="work is shared in proportion to dram_bw; the slower node's share would be empty",
        )


# ---- imports --------------------------------------------------------------------------
#
# A spec file is read only if it is a regular file of at most limits.MAX_SPEC_BYTES: it is
# stat'ed before it is opened, so `/dev/zero`, `/dev/urandom`, a FIFO or a directory is
# refused without reading from it, and the read itself never takes more than the limit.


def _file_identity(path: Path, importer: SourceLoc | None) -> tuple[int, int]:
    """(device, inode) of a readable spec file: the same file under any name or link."""
    info = _stat_spec(path, importer)
    return info.st_dev, info.st_ino


def _read_spec(path: Path, importer: SourceLoc | None) -> Spec:
    """One file, parsed and checked on its own (a missing file is an error at its import)."""
    return check_declarations(parse(_read_text(path, importer), str(path)))


def _collect_imports(
    spec: Spec, path: Path, decls: list, chain: list[tuple[tuple[int, int], Path]], done: set
) -> None:
    """Append the declarations imported by ``spec`` (depth first, each file once); ``chain``
    is the files being imported, outermost first."""
    for imp in spec.imports:
        target = path.parent / imp.path
        key = _file_identity(target, imp.loc)
        keys = [k for k, _ in chain]
        if key in keys:
            cycle = [p.name for _, p in chain[keys.index(key) :]] + [target.name]
            raise SpecError(f"import cycle: {' -> '.join(cycle)}", loc=imp.loc)
        if key in done:
            continue
        if len(chain) >= limits.MAX_IMPORT_DEPTH:
            raise SpecError(
                f"imports nest more than {limits.MAX_IMPORT_DEPTH} files deep", loc=imp.loc
            )
        done.add(key)
        imported = _read_spec(target, importer=imp.loc)
        decls.extend(imported.declarations)
        _collect_imports(imported, target, decls, [*chain, (key, target)], done)


def _stat_spec(path: Path, importer: SourceLoc | None) -> os.stat_result:
    try:
        info = os.stat(path)
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path
        raise _unreadable(path, err, importer) from None
    _check_regular(path, info, importer)
    return info


def _check_regular(path: Path, info: os.stat_result, importer: SourceLoc | None) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise SpecError(
            f"cannot read spec file {path}: it is {_file_kind(info.st_mode)}, not a regular file",
            loc=importer,
        )
    if info.st_size > limits.MAX_SPEC_BYTES:
        raise _too_large(path, importer)


def _read_text(path: Path, importer: SourceLoc | None) -> str:
    try:
        # O_NONBLOCK: should the path become a FIFO between stat and open, opening it
        # must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as err:
        raise _unreadable(path, err, importer) from None
    try:
        _check_regular(path, os.fstat(fd), importer)
        data = _read_at_most(fd, limits.MAX_SPEC_BYTES + 1)
    except OSError as err:
        raise _unreadable(path, err, importer) from None
    finally:
        os.close(fd)
    if len(data) > limits.MAX_SPEC_BYTES:  # it grew after the stat
        raise _too_large(path, importer)
    return _decode(path, data)


def _read_at_most(fd: int, n: int) -> bytes:
    chunks: list[bytes] = []
    while n > 0 and (chunk := os.read(fd, min(n, 1 << 16))):
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 text, or an error located at the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        loc = SourceLoc.at_byte(str(path), data, err.start)
        raise SpecError(
            f"spec file {path} is not UTF-8 text (byte 0x{data[err.start]:02x})", loc=loc
        ) from None


def _unreadable(path: Path, err: Exception, importer: SourceLoc | None) -> SpecError:
    reason = getattr(err, "strerror", None) or str(err)
    return SpecError(f"cannot read spec file {path!s}: {reason}", loc=importer)


def _too_large(path: Path, importer: SourceLoc | None) -> SpecError:
    return SpecError(
        f"spec file {path} is larger than {units.format_bytes(limits.MAX_SPEC_BYTES)}",
        loc=importer,
        hint="a spec is a few hundred lines; is this the right file?",
    )


def _file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


# ---- helpers --------------------------------------------------------------------------


def _each(table: Mapping, check: Callable) -> dict:
    return {name: check(decl) for name, decl in table.items()}


def _must_exist(table: Mapping, name: str, kind: str, loc: SourceLoc | None):
    if name not in table:
        known = ", ".join(table) or "none"
        raise SpecError(f"unknown {kind} '{name}'", loc=loc, hint=f"declared {kind}s: {known}")
    return table[name]


def _unknown_node(name: str, cluster: ClusterDecl, loc: SourceLoc | None) -> SpecError:
    nodes = ", ".join(cluster.node_names)
    return SpecError(
        f"node '{name}' is not in cluster {cluster.name}", loc=loc, hint=f"its nodes: {nodes}"
    )


def _layers(spans: list[tuple[int, int]], verb: str, verb_plural: str) -> str:
    """[(0, 2), (5, 5)] -> 'layers 0..2, 5 do'; [(3, 3)] -> 'layer 3 does'."""
    text = ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in spans)
    single = len(spans) == 1 and spans[0][0] == spans[0][1]
    return f"layer {text} {verb}" if single else f"layers {text} {verb_plural}"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _same(stated: object, actual: object) -> bool:
    """Files store reals as float32, so 1e-5 in the spec matches 9.99999975e-06 in the file.
    A file's value of another type (a string, a list) is simply not the same."""
    if _is_number(stated) and _is_number(actual):
        if isinstance(stated, Integral) and isinstance(actual, Integral):
            return stated == actual
        return math.isclose(float(stated), float(actual), rel_tol=1e-6)
    return type(stated) is type(actual) and stated == actual


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _show(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
