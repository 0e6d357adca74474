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

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs

from ckeir.errors import SourceLoc, SpecError
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

KNOWN_FAMILIES = ("llama",)

# With random weights nothing can come from a file, so these must be stated.
REQUIRED_WITH_RANDOM_WEIGHTS = ("family", "vocab", "hidden", "layers", "heads", "ffn", "context")
RANDOM_DEFAULTS = {
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_embeddings": False,
    "rope_style": "halves",
}
POSITIVE_INTS = ("vocab", "hidden", "layers", "heads", "kv_heads", "ffn", "context")


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
    own = _read_spec(path, importer=None)
    decls = list(own.declarations)
    _collect_imports(own, path, decls, in_progress=[path.resolve()], done={path.resolve()})
    return resolve(Spec.from_declarations(str(path), decls, own.imports))


def with_model_params(spec: Spec, model: str, params: Mapping[str, object], source: str) -> Spec:
    """Complete a model with hyper-parameters read from its weights file (``source`` names
    the file in messages).  A value the spec states must agree; the model and the schedules
    that run it are then checked again, including layer coverage."""
    decl = spec.models[model]
    unknown = set(params) - set(ModelDecl.PARAMS)
    if unknown:
        raise ValueError(f"not model hyper-parameters: {sorted(unknown)}")
    for key, value in params.items():
        stated = getattr(decl, key)
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
    """Every layer 0..n_layers-1 belongs to exactly one stage of each non-auto phase."""
    for phase in schedule.phases.values():
        if phase.auto:
            continue
        owner: dict[int, StageDecl] = {}
        for stage in phase.stages:
            last = n_layers - 1 if stage.last is None else stage.last
            missing = [i for i in range(stage.first, last + 1) if i >= n_layers]
            if missing:
                raise SpecError(
                    f"{_layers(missing, 'does', 'do')} not exist: model {schedule.model} has "
                    f"{n_layers} layers (0..{n_layers - 1})",
                    loc=stage.loc,
                )
            again = [i for i in range(stage.first, last + 1) if i in owner]
            if again:
                other = owner[again[0]].loc
                raise SpecError(
                    f"{_layers(again, 'belongs', 'belong')} to another stage of phase {phase.name} too",
                    loc=stage.loc,
                    hint=f"the other stage is at line {other.line}" if other else None,
                )
            owner |= dict.fromkeys(range(stage.first, last + 1), stage)
        gaps = [i for i in range(n_layers) if i not in owner]
        if gaps:
            raise SpecError(
                f"{_layers(gaps, 'belongs', 'belong')} to no stage of phase {phase.name}",
                loc=phase.loc,
                hint=f"the stages must cover layers 0..{n_layers - 1} exactly once",
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
        m = attrs.evolve(m, kv_heads=m.kv_heads or m.heads, **defaults)
    elif not m.weights.path:
        raise SpecError("the weights file name is empty", loc=m.weights.loc)

    def bad(key: str, message: str) -> SpecError:
        return SpecError(message, loc=m.key_locs.get(key, m.loc))

    for key in POSITIVE_INTS:
        if getattr(m, key) is not None and getattr(m, key) < 1:
            raise bad(key, f"{key} must be at least 1 in {where}")
    for key in ("norm_eps", "rope_theta"):
        if getattr(m, key) is not None and getattr(m, key) <= 0:
            raise bad(key, f"{key} must be greater than 0 in {where}")
    if m.hidden and m.heads and m.hidden % m.heads:
        raise bad("heads", f"heads {m.heads} does not divide hidden {m.hidden} in {where}")
    if m.head_dim and m.head_dim % 2:
        raise bad("heads", f"the head size hidden/heads = {m.head_dim} must be even for RoPE")
    if m.heads and m.kv_heads and m.heads % m.kv_heads:
        raise bad("kv_heads", f"kv_heads {m.kv_heads} does not divide heads {m.heads} in {where}")
    return m


def check_cluster(c: ClusterDecl) -> ClusterDecl:
    if not c.nodes:
        raise SpecError(
            f"cluster {c.name} has no node", loc=c.loc, hint="add e.g. `node n0 { ... }`"
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
    nodes = tuple(_check_node(_like(n, by_name, c.name, ())) for n in c.nodes)
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
        if link.bw <= 0:
            raise SpecError("a link's bandwidth must be greater than 0", loc=link.key_locs["bw"])
    return attrs.evolve(c, nodes=nodes)


def _like(node: NodeDecl, by_name: dict[str, NodeDecl], cluster: str, chain: tuple) -> NodeDecl:
    """The node with the keys of the node it is `like` filled in (stated keys win)."""
    if node.like is None:
        return node
    loc = node.key_locs["like"]
    if node.like not in by_name:
        known = ", ".join(by_name)
        raise SpecError(
            f"node '{node.like}' is not in cluster {cluster}", loc=loc, hint=f"its nodes: {known}"
        )
    if node.name in chain:
        raise SpecError(f"nodes copy each other in a circle: {' -> '.join(chain)}", loc=loc)
    source = _like(by_name[node.like], by_name, cluster, (*chain, node.name))
    inherited = {k: getattr(source, k) for k in NodeDecl.RESOURCES if getattr(node, k) is None}
    return attrs.evolve(node, **inherited)


def _check_node(node: NodeDecl) -> NodeDecl:
    missing = [k for k in NodeDecl.RESOURCES if getattr(node, k) is None]
    if missing:
        raise SpecError(
            f"node {node.name} has no {_and(missing)}",
            loc=node.loc,
            hint="state every resource, or copy another node with `like`",
        )
    for key in NodeDecl.RESOURCES:
        if getattr(node, key) <= 0:
            loc = node.key_locs.get(key) or node.key_locs.get("like", node.loc)
            raise SpecError(f"{key} of node {node.name} must be greater than 0", loc=loc)
    return node


def check_schedule(s: ScheduleDecl) -> ScheduleDecl:
    if s.model is None:
        raise SpecError(
            f"schedule {s.name} does not say what to run",
            loc=s.loc,
            hint="add `run MODEL on CLUSTER`",
        )
    if s.batch is not None and s.batch < 1:
        raise SpecError("batch must be at least 1", loc=s.key_locs["batch"])
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
    return s


def _default_phase(name: str, cluster: ClusterDecl, model: ModelDecl, loc: SourceLoc) -> PhaseDecl:
    last = model.layers - 1 if model.layers is not None else None
    stage = StageDecl((cluster.nodes[0].name,), 0, last, loc=loc)
    return PhaseDecl(name, (stage,), defaulted=True, loc=loc)


# ---- imports --------------------------------------------------------------------------


def _read_spec(path: Path, importer: SourceLoc | None) -> Spec:
    """One file, parsed and checked on its own (a missing file is an error at its import)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise SpecError(f"cannot read spec file {path}: {reason}", loc=importer) from None
    return check_declarations(parse(text, str(path)))


def _collect_imports(spec: Spec, path: Path, decls: list, in_progress: list, done: set) -> None:
    """Append the declarations imported by ``spec`` (depth first, each file once)."""
    for imp in spec.imports:
        target = path.parent / imp.path
        key = target.resolve()
        if key in in_progress:
            cycle = " -> ".join(p.name for p in in_progress[in_progress.index(key) :] + [key])
            raise SpecError(f"import cycle: {cycle}", loc=imp.loc)
        if key in done:
            continue
        done.add(key)
        imported = _read_spec(target, importer=imp.loc)
        decls.extend(imported.declarations)
        _collect_imports(imported, target, decls, [*in_progress, key], done)


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


def _layers(indices: list[int], verb: str, verb_plural: str) -> str:
    """[0, 1, 2, 5] -> 'layers 0..2, 5 do'; [3] -> 'layer 3 does'."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in runs)
    return f"layer {text} {verb}" if len(indices) == 1 else f"layers {text} {verb_plural}"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _same(stated: object, actual: object) -> bool:
    """Files store reals as float32, so 1e-5 in the spec matches 9.99999975e-06 in the file."""
    if isinstance(stated, float) or isinstance(actual, float):
        return math.isclose(float(stated), float(actual), rel_tol=1e-6)
    return stated == actual


def _show(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
