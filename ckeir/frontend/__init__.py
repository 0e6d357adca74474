"""The `.cke` frontend: text -> checked, typed AST.

    spec = load_spec("specs/tiny.cke")          # a file and its imports
    sched = spec.schedule()                      # the first (or only) schedule
    model, cluster = spec.model_of(sched), spec.cluster_of(sched)
    sched.phases["decode"].stages                # StageDecl(nodes, first, last)

Every problem is a located ``ckeir.errors.SpecError``.
"""

from ckeir.frontend.ast import (
    ClusterDecl,
    ImportDecl,
    LinkDecl,
    ModelDecl,
    NodeDecl,
    PhaseDecl,
    ScheduleDecl,
    Spec,
    StageDecl,
    WeightsDecl,
)
from ckeir.frontend.semantic import (
    KNOWN_FAMILIES,
    check_layer_coverage,
    load_spec,
    parse_spec,
    with_model_params,
)

__all__ = [
    "KNOWN_FAMILIES",
    "ClusterDecl",
    "ImportDecl",
    "LinkDecl",
    "ModelDecl",
    "NodeDecl",
    "PhaseDecl",
    "ScheduleDecl",
    "Spec",
    "StageDecl",
    "WeightsDecl",
    "check_layer_coverage",
    "load_spec",
    "parse_spec",
    "with_model_params",
]
