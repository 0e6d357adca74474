"""ckeir — a compiler for LLM inference on CPUs.

prog = ckeir.compile("specs/tiny.cke")
prog.generate([1, 2, 3], max_new_tokens=10)
module = ckeir.parse_ir(text); text = ckeir.print_ir(module)
"""

from ckeir import dialects as _dialects  # noqa: F401  (registers the ops)
from ckeir.errors import CkeError
from ckeir.ir import parse_ir, print_ir, verify

__version__ = "0.1.0"


def compile(spec_path, **options):  # noqa: A001 - the API's name is `ckeir.compile`
    """Compile a `.cke` spec into a runnable `Program` (see `ckeir.api`)."""
    from ckeir.api import compile as _compile

    return _compile(spec_path, **options)


__all__ = ["CkeError", "compile", "parse_ir", "print_ir", "verify", "__version__"]
