"""The IR: types, attributes, operations, printer, parser and verifier (MLIR's generic syntax)."""

from ckeir.ir.attributes import *  # noqa: F403
from ckeir.ir.core import (
    Block,
    BlockArgument,
    Builder,
    Operation,
    OpResult,
    Region,
    Rewriter,
    Value,
    module_op,
)
from ckeir.ir.parser import parse_ir
from ckeir.ir.printer import print_ir
from ckeir.ir.types import *  # noqa: F403
from ckeir.ir.verifier import verify

__all__ = [
    "Block",
    "BlockArgument",
    "Builder",
    "Operation",
    "OpResult",
    "Region",
    "Rewriter",
    "Value",
    "module_op",
    "parse_ir",
    "print_ir",
    "verify",
]
