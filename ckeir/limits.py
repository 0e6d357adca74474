"""Sane limits on every number that reaches ckeir from outside (a spec, an IR text, a model
file, the command line), in one place.

A number from outside sizes work and memory: a layer range is walked, a count becomes a list,
a dimension becomes a buffer.  Each is checked against these bounds *before* it is used, so a
small hostile input cannot cost unbounded time or memory.  The bounds are far above any real
model or machine (the largest open models have ~130 layers, hidden 16,384, vocab 256k) and far
below what would hang a run.  Callers raise their own located ``CkeError`` when a value is out
of range; `check_int` / `check_real` give the wording.
"""

from __future__ import annotations

import math

# ---- text inputs ------------------------------------------------------------------------------
MAX_SPEC_BYTES = 256 << 10  # one .cke file, each import too (Lark parses ~80 KiB/s)
MAX_IMPORT_DEPTH = 64  # nested `import` statements
MAX_NUMBER_DIGITS = 64  # digits of one numeric literal in a spec
MAX_IR_BYTES = 256 << 20  # one IR text read by `ckec opt` / `ckeir.parse_ir`

# ---- model hyper-parameters -------------------------------------------------------------------
MAX_LAYERS = 4096
MAX_HIDDEN = 1 << 17
MAX_HEADS = 1 << 12
MAX_FFN = 1 << 20
MAX_VOCAB = 1 << 24
MAX_CONTEXT = 1 << 24
MAX_BATCH = 1 << 12
MIN_NORM_EPS, MAX_NORM_EPS = 1e-30, 1.0  # RMSNorm epsilon, exclusive of 0
MIN_ROPE_THETA, MAX_ROPE_THETA = 1.0, 1e12

# ---- clusters ---------------------------------------------------------------------------------
MAX_NODES = 1 << 12
MAX_CORES = 1 << 14  # per node
MAX_BYTES = 1 << 60  # a memory or cache size (1 EiB)
MAX_RATE = 1e15  # bytes per second (8 Pbit/s)
MIN_RATE = 1.0  # bytes per second
MAX_SECONDS = 3600.0  # a latency
MAX_RATE_SKEW = 1e6  # fastest ÷ slowest node of one stage (shards stay non-empty)

# ---- command line -----------------------------------------------------------------------------
MAX_NEW_TOKENS = 1 << 24
MAX_TOKEN_ID = (1 << 31) - 1

# ---- model files ------------------------------------------------------------------------------
MAX_TENSORS = 1 << 20  # tensors in one model file
MAX_METADATA_KEYS = 1 << 16
MAX_TENSOR_DIMS = 4


def in_int_range(value: object, lo: int, hi: int) -> bool:
    """An int (not a bool) in [lo, hi]."""
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def in_real_range(value: object, lo: float, hi: float) -> bool:
    """A finite real number in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        v = float(value)
    except OverflowError:
        return False
    return math.isfinite(v) and lo <= v <= hi


def range_message(what: str, value: object, lo: float, hi: float) -> str:
    """`layers must be between 1 and 4096, not 9223372036854775807`, with long values cut."""
    return f"{what} must be between {_bound(lo)} and {_bound(hi)}, not {shown(value)}"


def shown(value: object) -> str:
    """A value from outside, for a message: a huge integer by its size (past 4,300 digits
    Python cannot even print it), anything else cut to a readable length."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"a {value.bit_length()}-bit integer"
    text = repr(value)
    return text if len(text) <= 40 else text[:20] + "…" + text[-8:]


def _bound(x: float) -> str:
    """Integers as written (1048576), reals compactly (1e-05, 1e+15)."""
    return str(x) if isinstance(x, int) else f"{x:g}"


# ---- added later (append only) ----------------------------------------------------------------
MIN_SECONDS = 1e-9  # a latency: one nanosecond, the smallest time unit of a spec
MAX_WATCHDOG_S = 7 * 86400.0  # $CKEIR_WATCHDOG_SECONDS: a week (0 turns the watchdog off)
MAX_IR_DEPTH = 100  # nested regions, attributes and types in one IR text (ckeir nests ~4)
MAX_CACHE_ENTRY_BYTES = 1 << 31  # one disk cache entry (objects, indexes: megabytes in practice)
