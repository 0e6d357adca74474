"""Op definitions by namespace; importing this package registers all of them."""

from ckeir.dialects import cke, dist, mem  # noqa: F401
from ckeir.ir.opdef import REGISTRY, OpDef, lookup

__all__ = ["REGISTRY", "OpDef", "lookup"]
