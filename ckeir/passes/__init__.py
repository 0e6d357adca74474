"""Registered passes (one per module) and the pass manager.  Importing this package registers
every pass of this layer."""

from ckeir.passes import insert_collectives, place, plan_memory, quantize, shape_infer, tile  # noqa: F401
from ckeir.passes.manager import (
    PASSES,
    Pass,
    PassContext,
    PassManager,
    Target,
    parse_pipeline,
    register_pass,
)

__all__ = [
    "PASSES",
    "Pass",
    "PassContext",
    "PassManager",
    "Target",
    "parse_pipeline",
    "register_pass",
]
