"""IR from anyone (`ckec opt FILE`, `ckeir.parse_ir`): every attribute is checked against its
declared kind and range before a pass or a backend uses it, text that nests without end or
holds numbers no type can carry is an IRParseError, and whatever the text, parse → verify →
the default passes end in a module or a located CkeError — never another exception."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from cli_runner import ckec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckeir.dialects import REGISTRY
from ckeir.errors import CkeError, IRParseError
from ckeir.ir import attributes as A
from ckeir.ir import core as ir_core
from ckeir.ir import opdef, parse_ir, print_ir, verify
from ckeir.ir import parser as ir_parser
from ckeir.ir import types as T
from ckeir.ir import verifier as ir_verifier
from ckeir.ir.opdef import AttrSpec, attr_spec
from ckeir.limits import MAX_IR_DEPTH

from .test_verifier import OP_LINE, parse_sample, verify_error
from .work import CountedText, counting, grows_linearly, hang_guard

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "specs" / "tiny.cke"
FILECHECK = REPO / "tests" / "filecheck"


# ---- every declared range is enforced -----------------------------------------------------


def out_of_range(spec: AttrSpec) -> list[A.Attribute]:
    """Values of the right kind that the declaration refuses."""
    if spec.choices:
        return [A.StringAttr("bogus")]
    if spec.kind == "int":
        bad = [spec.lo - 1] if spec.lo is not None else []
        bad += [spec.hi + 1] if spec.hi is not None else []
        return [A.IntegerAttr(v) for v in bad]
    if spec.kind == "float":
        bad = [float("inf"), float("nan")]
        bad += [spec.lo / 2 if spec.lo > 0 else spec.lo - 1] if spec.lo is not None else []
        bad += [spec.hi * 2] if spec.hi is not None else []
        return [A.FloatAttr(v) for v in bad]
    if spec.kind == "ints":
        lo, hi = spec.length or (1, 4)
        bad = [A.DenseArrayAttr((spec.lo - 1,) * lo)]
        if spec.hi is not None:
            bad.append(A.DenseArrayAttr((spec.hi + 1,) * lo))
        if spec.length is not None:
            bad += [A.DenseArrayAttr((spec.lo + 1,) * n) for n in (lo - 1, hi + 1) if n >= 0]
        return bad
    return []


def ranged_cases():
    for name, d in sorted(REGISTRY.items()):
        for key, kind in {**d.attributes, **d.optional}.items():
            for bad in out_of_range(attr_spec(kind)):
                yield pytest.param(name, key, bad, id=f"{name}-{key}-{str(bad)[:24]}")


@pytest.mark.parametrize(("name", "key", "bad"), list(ranged_cases()))
def test_every_declared_range_is_enforced(name, key, bad):
    module, op = parse_sample(name)
    op.attributes[key] = bad
    err = verify_error(module)
    assert f"'{name}' op attribute '{key}' must be" in err.message
    assert err.loc.line == OP_LINE


def test_ranges_cover_the_attributes_that_size_or_address_memory():
    # Sizes, offsets, ranks and layers are the numbers a backend turns into addresses.
    for name, key in [
        ("cke.add", "offset"),
        ("cke.func", "arena_bytes"),
        ("cke.func", "max_tokens"),
        ("cke.weight", "shape"),
        ("cke.weight", "shard"),
        ("cke.matmul", "tile"),
        ("cke.matmul", "tp"),
        ("cke.attention", "layer"),
        ("dist.send", "peer"),
        ("dist.allreduce", "group"),
        ("mem.arena", "bytes"),
    ]:
        d = REGISTRY[name]
        spec = attr_spec({**d.attributes, **d.optional}[key])
        assert spec.choices or spec.lo is not None, (name, key)


# ---- ckec opt on hostile IR ---------------------------------------------------------------


@pytest.fixture(scope="module")
def placed() -> str:
    """specs/tiny.cke after shape-infer, quantize and place (tensor-parallel prefill)."""
    r = ckec(TINY, "--emit=mlir", "--pass-pipeline=shape-infer,quantize,place")
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def typed() -> str:
    """specs/tiny.cke after shape-infer."""
    r = ckec(TINY, "--emit=mlir", "--pass-pipeline=shape-infer")
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def planned() -> str:
    """specs/tiny.cke after the whole default pipeline (arena offsets set)."""
    r = ckec(TINY, "--emit=mlir")
    assert r.returncode == 0, r.stderr
    return r.stdout


def replace_first(text: str, pattern: str, new: str) -> tuple[str, int]:
    """`text` with the first match of `pattern` replaced; and the match's line number."""
    m = re.search(pattern, text)
    assert m, pattern
    return text[: m.start()] + new + text[m.end() :], text.count("\n", 0, m.start()) + 1


def opt(tmp_path, text: str, *args):
    path = tmp_path / "in.mlir"
    path.write_text(text)
    return ckec("opt", path, *args, timeout=300)


def assert_located(r, line: int, *phrases: str) -> None:
    assert r.returncode == 1, r.stderr
    assert "internal error" not in r.stderr
    assert re.search(rf"in\.mlir:{line}:\d+: ", r.stderr), r.stderr
    for p in phrases:
        assert p in r.stderr, r.stderr


def test_an_offset_past_the_arena_is_refused_before_lowering(tmp_path, planned):
    text, line = replace_first(planned, r"offset = \d+ : i64", f"offset = {2**62} : i64")
    r = opt(tmp_path, text, "--pass-pipeline=lower-llvm", "--emit=llvm")
    assert_located(r, line, "ends past its func's arena")


def test_an_offset_just_past_the_arena_is_refused(tmp_path, planned):
    # A buffer of the decode func (its arena is a few KiB) moved to end one byte too far.
    m = re.search(r"arena_bytes = (\d+) : i64, group = array<i64: 0>", planned)
    arena = int(m.group(1))
    decode = planned.index("^bb0", planned.index('sym_name = "prefill_r1"'))
    head, tail = planned[:decode], planned[decode:]
    row = re.search(r'"cke.embed"\(.*\) \{offset = (\d+) : i64\} : .* -> tensor<1x128xf32>', tail)
    assert row, "the decode func embeds one row of 128 floats"
    start = row.start(1)
    tail = tail[:start] + str(arena - 128 * 4 + 1) + tail[row.end(1) :]
    r = opt(tmp_path, head + tail, "--pass-pipeline=tile")
    line = (head + tail).count("\n", 0, len(head) + start) + 1
    assert_located(r, line, f"of 512 bytes ends past its func's arena of {arena} bytes")


def test_an_offset_of_the_wrong_kind_is_reported_by_its_op(tmp_path, planned):
    # The func's arena rule runs before the ops of its body are verified: it must not trust
    # their attributes (a string offset was a TypeError there).
    text, line = replace_first(planned, r"offset = \d+ : i64", 'offset = "partial"')
    r = opt(tmp_path, text, "--pass-pipeline=tile")
    assert_located(r, line, "attribute 'offset' must be an integer in [0, ")


def test_an_unknown_tp_is_a_located_verifier_error(tmp_path, placed):
    # insert-collectives took any other value for "vocab" (TypeError unpacking its slice).
    text, line = replace_first(placed, r'tp = "partial"', 'tp = "rows"')
    r = opt(tmp_path, text, "--spec", TINY, "--pass-pipeline=insert-collectives")
    assert_located(r, line, "attribute 'tp' must be one of 'partial', 'vocab', got \"rows\"")


@pytest.mark.parametrize(
    ("pattern", "new", "phrase"),
    [
        (r"heads = 4 : i64", 'heads = "four"', "attribute 'heads' must be an integer"),
        (r"eps = [^,}]+", "eps = 1.000000e+30 : f64", "attribute 'eps' must be a float in"),
        (r"theta = [^,}]+", "theta = 0x7FF8000000000000 : f64", "must be a finite number"),
        (r"layer = 0 : i64", f"layer = {2**40} : i64", "attribute 'layer' must be an integer"),
        (r"shape = array<i64: 512, 128>", "shape = array<i64: 512, -3>", "attribute 'shape'"),
        (r"\"cke.silu_mul\"", '"cke.unheard_of"', "unknown operation 'cke.unheard_of'"),
        (r"layer = 0 : i64", "layer = 0 : i64, lyer = 0 : i64", "has no attribute 'lyer'"),
        (r"style = \"halves\"", 'style = "spiral"', "attribute 'style' must be one of"),
    ],
)
def test_hostile_attributes_and_ops_are_located_errors(tmp_path, typed, pattern, new, phrase):
    text, line = replace_first(typed, pattern, new)
    r = opt(tmp_path, text, "--pass-pipeline=shape-infer")
    assert_located(r, line, phrase)


def test_a_program_of_more_rows_than_its_cache_is_refused(tmp_path, typed):
    # tiny.cke's caches hold 256 rows; a prefill of 257 would write past them.
    text, _ = replace_first(typed, r"max_tokens = 256", "max_tokens = 257")
    r = opt(tmp_path, text, "--pass-pipeline=shape-infer")
    func_line = typed.split("\n").index('  "cke.func"() ({') + 1
    assert_located(r, func_line, "max_tokens 257 is more rows than its KV cache's context of 256")


@pytest.mark.parametrize(
    ("old", "new", "phrase"),
    [
        ('sym_name = "prefill_r1"', 'sym_name = "prefill_r0"', "is already the name of another"),
        ('sym_name = "prefill_r1"', 'sym_name = "bad name"', "sym_name 'bad name' must match"),
        ("rank = 1 : i64, stage = 0", "rank = 0 : i64, stage = 0", "second prefill program"),
    ],
    ids=["same-name", "not-a-symbol", "same-phase-and-rank"],
)
def test_funcs_are_distinct_programs_with_symbol_names(tmp_path, planned, old, new, phrase):
    # A func's sym_name becomes its native symbol; the runtime picks a program by phase
    # and rank.
    assert old in planned
    text = planned.replace(old, new, 1)
    r = opt(tmp_path, text, "--pass-pipeline=tile")
    lines = text.split("\n")
    funcs = [i + 1 for i, ln in enumerate(lines) if ln == '  "cke.func"() ({']
    assert_located(r, funcs[1], phrase)  # the second func (prefill_r1) is the culprit


ARGS = "%ids: tensor<{n}xi32>, %pos: i64, %k: memref<1x8x16xf32>, %v: memref<1x8x16xf32>"
EMPTY_ROWS = """\
"builtin.module"() ({{
  "cke.func"() ({{
  ^bb0(%s):
{body}
  }}) {{phase = "decode", rank = 0 : i64, sym_name = "decode_r0"}} : () -> ()
  "cke.func"() ({{
  ^bb0(%s):
    %w = "cke.weight"() {{name = "w", shape = array<i64: 1, 16>}} : () -> tensor<1x16xf32>
    "dist.send"(%w) {{bytes = 0 : i64, peer = 0 : i64}} : (tensor<1x16xf32>) -> ()
    "cke.return"() : () -> ()
  }}) {{phase = "decode", rank = 1 : i64, sym_name = "decode_r1"}} : () -> ()
}}) : () -> ()
""".replace("%s", ARGS)
RECEIVED = """\
    %x = "dist.recv"() {bytes = 0 : i64, peer = 1 : i64} : () -> tensor<0x16xf32>
    %y = "cke.matmul"(%x, %x) : (tensor<0x16xf32>, tensor<0x16xf32>) -> tensor<0x0xf32>
    %z = "cke.matmul"(%y, %y) : (tensor<0x0xf32>, tensor<0x0xf32>) -> tensor<0x0xf32>
    "cke.return"(%z) : (tensor<0x0xf32>) -> ()"""
EMBEDDED = """\
    %t = "cke.weight"() {name = "t", shape = array<i64: 64, 16>} : () -> tensor<64x16xf32>
    %x = "cke.embed"(%ids, %t) : (tensor<0xi32>, tensor<64x16xf32>) -> tensor<0x16xf32>
    %y = "cke.matmul"(%x, %x) : (tensor<0x16xf32>, tensor<0x16xf32>) -> tensor<0x0xf32>
    %z = "cke.matmul"(%y, %y) : (tensor<0x0xf32>, tensor<0x0xf32>) -> tensor<0x0xf32>
    "cke.return"(%z) : (tensor<0x0xf32>) -> ()"""


@pytest.mark.parametrize(
    ("ids", "body", "line", "phrase"),
    [
        (1, RECEIVED, 5, "'cke.matmul' op operand #0 tensor<0x16xf32> is empty"),
        (0, EMBEDDED, 2, "'cke.func' op entry block must take (ids: tensor<Nxi32> with N > 0"),
    ],
    ids=["received", "no-ids"],
)
def test_empty_tensors_are_refused(tmp_path, ids, body, line, phrase):
    # A matmul of empty rows divided by zero choosing its tile.
    text = EMPTY_ROWS.format(n=ids, body=body)
    r = opt(tmp_path, text, "--pass-pipeline=tile")
    assert_located(r, line, phrase)


def test_a_func_attribute_is_located_at_its_func(tmp_path, typed):
    # A region op's attributes follow its body: the error points at the op's name.
    text, _ = replace_first(typed, r"max_tokens = 256", f"max_tokens = {2**40}")
    r = opt(tmp_path, text, "--pass-pipeline=shape-infer")
    func_line = typed.split("\n").index('  "cke.func"() ({') + 1
    assert_located(r, func_line, "'cke.func' op attribute 'max_tokens' must be an integer in")


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ('"a.b"() {x = ' + "[" * 5000 + "]" * 5000 + "} : () -> ()", "nested more than"),
        ('%0 = "a.b"() : () -> ' + "tensor<" * 5000 + "f32" + ">" * 5000, "nested more than"),
        ('"a.b"() ' + '({"a.b"() ' * 3000 + "}) : () -> ()" * 3000, "nested more than"),
        ('"a.b"() {x = ' + "7" * 5000 + "} : () -> ()", "integer literal out of range"),
        ('%0 = "a.b"() : () -> tensor<' + "9" * 40 + "xf32>", "dimension"),
        ('"cke.func"() : () -> ()', "'cke.func' op has 1 regions, got 0"),
    ],
    ids=["attributes", "types", "regions", "huge-int", "huge-dim", "missing-region"],
)
def test_hostile_structure_is_a_located_error(tmp_path, text, phrase):
    r = opt(tmp_path, text + "\n", "--pass-pipeline=shape-infer")
    assert_located(r, 1, phrase)


def test_nesting_up_to_the_bound_parses():
    depth = MAX_IR_DEPTH  # the attribute itself and each list inside it are one level
    module = parse_ir('"a.b"() {x = ' + "[" * depth + "]" * depth + "} : () -> ()")
    assert print_ir(module).count("[") == depth
    with pytest.raises(IRParseError, match="nested more than"):
        parse_ir('"a.b"() {x = ' + "[" * (depth + 1) + "]" * (depth + 1) + "} : () -> ()")


def _ops(n: int) -> str:
    body = "\n".join(f'  %{i} = "a.b"() : () -> i64' for i in range(n))
    return '"c.d"() ({\n' + body + "\n}) : () -> ()\n"


def _blocks(n: int) -> str:
    body = "\n".join(f'^bb{i}(%a{i}: i64):\n  "a.b"(%a{i}) : (i64) -> ()' for i in range(n))
    return '"c.d"() ({\n' + body + "\n}) : () -> ()\n"


def test_parsing_is_linear_in_the_number_of_ops():
    """The parser's work (lines run, characters of the text read, set elements taken in)
    grows as the text: each op's location was found by counting the newlines before it, so
    20,000 ops took 15 s.  Counted, not timed; the guard only ends a hang."""
    work = {}
    for n in (500, 2_000):
        text = _ops(n)
        with hang_guard(300), counting(ir_parser, ir_core) as work[n]:
            module = parse_ir(CountedText(text, work[n]))
        assert sum(op.name == "a.b" for op in module.walk()) == n
    assert grows_linearly(work[500], work[2_000], 4) == []


def test_verifying_many_blocks_is_linear():
    """The verifier's work grows as the blocks: it copied the visible values for every
    block, so 20,000 blocks took 24 s.  Counted, not timed; the guard only ends a hang."""
    work = {}
    for n in (500, 2_000):
        module = parse_ir(_blocks(n))
        with hang_guard(300), counting(ir_verifier, opdef, ir_core) as work[n]:
            verify(module, allow_unregistered=True)
    assert grows_linearly(work[500], work[2_000], 4) == []


# ---- property: mutated IR through the default passes --------------------------------------


def _seed_texts() -> list[str]:
    texts = []
    for path in sorted(FILECHECK.glob("*.mlir")):
        lines = path.read_text().splitlines(keepends=True)
        texts.append("".join(ln for ln in lines if not ln.startswith("//")))
    return texts


SEEDS = _seed_texts()
NUMBERS = [
    "0",
    "-1",
    "1",
    "3",
    "4611686018427387904",
    "9" * 30,
    "1e30",
    "1.0e400",
    "nan",
    "0x7FF0000000000000",
]
WORDS = [
    '"partial"',
    '"vocab"',
    '"bogus"',
    '"prefill"',
    "array<i64: 1>",
    "array<i64>",
    "1.5",
    "[1]",
    "i64",
    "unit",
]


# an attribute entry `name = ` (not `%5 = `, which defines a value)
ATTRIBUTE = r"(?<=[{ ])[a-z_]+ "
# a number in an attribute value (`= 4 : i64`, `array<i64: 4, 8>`), not in a name or a type
ATTRIBUTE_NUMBER = r"(?<=[=:,] )-?\d+(\.\d+)?(e[-+]?\d+)?(?=[ ,>}\]])"


@st.composite
def mutated_ir(draw) -> str:
    text = draw(st.sampled_from(SEEDS + [_tiny_program()]))
    for _ in range(draw(st.integers(1, 3))):
        # mostly changes that still parse, so that the verifier and the passes see them
        kind = draw(
            st.sampled_from(["number"] * 3 + ["value"] * 3 + ["drop-attr"] * 2 + ["line", "cut"])
        )
        if kind == "number":
            spots = list(re.finditer(ATTRIBUTE_NUMBER, text))
            if spots:
                m = spots[draw(st.integers(0, len(spots) - 1))]
                text = text[: m.start()] + draw(st.sampled_from(NUMBERS)) + text[m.end() :]
        elif kind == "value":
            spots = list(re.finditer(ATTRIBUTE + r"= ([^,}]+)", text))
            if spots:
                m = spots[draw(st.integers(0, len(spots) - 1))]
                new = draw(st.sampled_from(WORDS + NUMBERS))
                text = text[: m.start(1)] + new + text[m.end(1) :]
        elif kind == "line":
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            if draw(st.booleans()):
                del lines[i]
            else:
                lines.insert(j, lines[i])
            text = "\n".join(lines)
        elif kind == "drop-attr":
            spots = list(re.finditer(ATTRIBUTE + r"= [^,}]+(, )?", text))
            if spots:
                m = spots[draw(st.integers(0, len(spots) - 1))]
                text = text[: m.start()] + text[m.end() :]
        elif text:
            i = draw(st.integers(0, len(text) - 1))
            text = text[:i] + text[i + draw(st.integers(1, 8)) :]
    return text


@functools.cache
def _tiny_job():
    from ckeir.driver import resolve

    return resolve(TINY)


@functools.cache
def _tiny_program() -> str:
    """The printed programs of specs/tiny.cke before any pass."""
    from ckeir.driver import build_ir

    return print_ir(build_ir(_tiny_job()))


def _context():
    from ckeir.passes import PassContext

    job = _tiny_job()
    return PassContext(
        target=job.target, options={"schedule": job.schedule, "cluster": job.cluster}
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_ir())
def test_mutated_ir_ends_in_a_module_or_a_cke_error(text):
    from ckeir.backends.llvm import lower  # noqa: F401  (registers lower-llvm)
    from ckeir.driver import default_pipeline
    from ckeir.passes import PassManager, parse_pipeline

    try:
        module = parse_ir(text, "fuzz.mlir")
        placed = any(op.attr("rank") is not None for op in module.walk() if op.name == "cke.func")
        pipeline = "tile,plan-memory,lower-llvm" if placed else default_pipeline() + ",lower-llvm"
        PassManager(parse_pipeline(pipeline)).run(module, _context())
    except CkeError:
        pass


def test_integer_literals_fit_their_type():
    # Not a rule of any op: a literal its own type cannot hold is not read at all.
    with pytest.raises(IRParseError, match="out of range for i8"):
        parse_ir('"a.b"() {x = 256 : i8} : () -> ()')
    x = parse_ir('"a.b"() {x = -128 : i8} : () -> ()').regions[0].entry.ops[0].attributes["x"]
    assert (x.value, x.type) == (-128, T.IntegerType(8))
