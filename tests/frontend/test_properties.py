"""Properties of the frontend, checked on generated input.

* A randomly generated valid spec, written with random layout (`;` or newlines, comments,
  blank lines, spacing, optional brackets), parses to exactly the AST it was generated from.
* Any text obtained by mutating a valid spec either parses or raises a located CkeError:
  never a Lark exception, never a Python error.
* So does a file made by mutating its tokens and lines hostilely (extreme numbers, names
  swapped, lines deleted or repeated, imports of devices, FIFOs, loops), loaded with its
  imports, in bounded time and memory.
"""

import os
import re
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckeir import units
from ckeir.errors import CkeError, SourceLoc, SpecError
from ckeir.frontend import (
    ClusterDecl,
    LinkDecl,
    ModelDecl,
    NodeDecl,
    PhaseDecl,
    ScheduleDecl,
    Spec,
    StageDecl,
    WeightsDecl,
    check_layer_coverage,
    load_spec,
    parse_spec,
)

SPECS = Path(__file__).resolve().parents[2] / "specs"

# Names, including words that are keywords elsewhere: a keyword is only one where it can stand.
NAMES = st.one_of(
    st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True),
    st.sampled_from(["layers", "node", "link", "on", "stage", "model", "auto", "like", "q8_0"]),
)


class Layout:
    """Draws the incidental parts of the text: separators, spaces, comments."""

    def __init__(self, draw):
        self.draw = draw

    def sep(self) -> str:
        return self.draw(st.sampled_from([";", "\n", " ;\n", "\n\n  ", "  # note\n", ";# x;y\n\t"]))

    def sp(self) -> str:
        return self.draw(st.sampled_from([" ", "  ", "\t", " \t "]))

    def block(self, head: str, statements: list[str]) -> str:
        body = "".join(self.sep() + s for s in statements)
        return f"{head}{self.sp()}{{{body}{self.draw(st.sampled_from(['', self.sep()]))}}}"


# Node bandwidths within limits.MAX_RATE_SKEW of each other (64 GB/s ÷ 1 Mbit/s = 5.1e5).
FAST_RATES = {u: units.RATES[u] for u in ("Mbit/s", "MB/s", "Gbit/s", "GB/s")}


def quantity(draw, table: dict) -> tuple[str, Fraction]:
    n = draw(st.integers(1, 64))
    unit = draw(st.sampled_from(sorted(table)))
    return f"{n}{draw(st.sampled_from(['', ' ']))}{unit}", n * Fraction(table[unit])


@st.composite
def models(draw, lay: Layout):
    name = draw(NAMES)
    heads = draw(st.integers(1, 6))
    kv_heads = draw(st.sampled_from([k for k in range(1, heads + 1) if heads % k == 0]))
    head_dim = 2 * draw(st.integers(1, 8))
    sizes = dict(
        vocab=draw(st.integers(1, 999)), hidden=heads * head_dim, layers=draw(st.integers(1, 6)),
        heads=heads, ffn=draw(st.integers(1, 300) | st.integers(1, 9).map(lambda b: 32 * b)),
        context=draw(st.integers(1, 300)),
    )  # fmt: skip
    written = [f"family{lay.sp()}llama"] + [f"{k}{lay.sp()}{v}" for k, v in sizes.items()]
    values = dict(sizes, kv_heads=kv_heads, norm_eps=1e-5, rope_theta=10000.0)
    values |= dict(tie_embeddings=False, rope_style="halves")
    if draw(st.booleans()) or kv_heads != heads:
        written.append(f"kv_heads {kv_heads}")
    for key, choices in [
        ("norm_eps", ["1e-5", "1e-6", "0.5", "3.25e-4", "2E-7"]),
        ("rope_theta", ["10000", "500000", "1e4", "1.5e6"]),
        ("tie_embeddings", ["true", "false"]),
        ("rope_style", ["interleaved", "halves"]),
    ]:
        if draw(st.booleans()):
            word = draw(st.sampled_from(choices))
            written.append(f"{key} {word}")
            values[key] = {"true": True, "false": False}.get(word, word)
            if key in ("norm_eps", "rope_theta"):
                values[key] = float(word)
    seed = draw(st.integers(0, 2**31))
    written.append(f"weights{lay.sp()}random(seed{lay.sp()}={lay.sp()}{seed})")
    written = draw(st.permutations(written))
    decl = ModelDecl(name, weights=WeightsDecl("random", seed=seed), **values, family="llama")
    return lay.block(f"model {name}", written), decl


@st.composite
def clusters(draw, lay: Layout):
    name = draw(NAMES)
    node_names = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    texts, nodes = [], []
    for node in node_names:
        like = draw(st.sampled_from(nodes)) if nodes and draw(st.booleans()) else None
        stated = {k: draw(st.booleans()) or like is None for k in NodeDecl.RESOURCES}
        written, values = [f"like {like.name}"] if like else [], {}
        for key in NodeDecl.RESOURCES:
            if not stated[key]:
                values[key] = getattr(like, key)
            elif key == "cores":
                values[key] = draw(st.integers(1, 64))
                written.append(f"cores {values[key]}")
            else:
                text, amount = quantity(draw, FAST_RATES if key == "dram_bw" else units.SIZES)
                written.append(f"{key} {text}")
                values[key] = float(amount) if key == "dram_bw" else int(amount)
        written = draw(st.permutations(written))
        texts.append(lay.block(f"node {node}", written))
        nodes.append(NodeDecl(node, like=like and like.name, **values))
    pairs = [(a, b) for i, a in enumerate(node_names) for b in node_names[i + 1 :]]
    links = []
    for a, b in draw(st.lists(st.sampled_from(pairs), unique=True)) if pairs else []:
        bw, bw_value = quantity(draw, units.RATES)
        latency, seconds = quantity(draw, units.TIMES)
        texts.append(lay.block(f"link {a} <-> {b}", [f"bw {bw}", f"latency {latency}"]))
        links.append(LinkDecl(a, b, float(bw_value), float(seconds)))
    return lay.block(f"cluster {name}", texts), ClusterDecl(name, tuple(nodes), tuple(links))


@st.composite
def phases(draw, lay: Layout, name: str, model: ModelDecl, node_names: tuple):
    kind = draw(st.sampled_from(["omitted", "auto", "stages"]))
    n_layers = model.layers
    # nodes a tensor-parallel stage can use: one key/value head, vocabulary entry and whole
    # 32-block of FFN rows each (a single node needs none)
    ffn_blocks = model.ffn // 32 if model.ffn % 32 == 0 else 1
    most_parallel = max(1, min(model.kv_heads, model.vocab, ffn_blocks))
    if kind == "omitted":
        return None, PhaseDecl(
            name, (StageDecl((node_names[0],), 0, n_layers - 1),), defaulted=True
        )
    if kind == "auto":
        return lay.block(f"phase {name}", ["auto"]), PhaseDecl(name, auto=True)
    n_stages = draw(st.integers(1, min(n_layers, len(node_names))))
    cuts = sorted(draw(st.sets(st.integers(1, max(n_layers - 1, 1)), min_size=n_stages - 1, max_size=n_stages - 1)))  # fmt: skip
    bounds = list(zip([0, *cuts], [*cuts, n_layers], strict=True))
    order = draw(st.permutations(node_names))
    groups = [order[i::n_stages] for i in range(n_stages)]  # disjoint, non-empty
    texts, stages = [], []
    for (first, end), group in zip(bounds, groups, strict=True):
        group = tuple(group[: draw(st.integers(1, min(len(group), most_parallel)))])
        nodes = group[0] if len(group) == 1 and draw(st.booleans()) else f"[{', '.join(group)}]"
        layers = str(first) if first == end - 1 and draw(st.booleans()) else f"{first}..{end - 1}"
        texts.append(f"stage {nodes} layers {layers}")
        stages.append(StageDecl(group, first, end - 1))
    return lay.block(f"phase {name}", texts), PhaseDecl(name, tuple(stages))


@st.composite
def specs(draw):
    lay = Layout(draw)
    model_text, model = draw(models(lay))
    cluster_text, cluster = draw(clusters(lay))
    name = draw(NAMES)
    written = [f"run {model.name} on {cluster.name}"]
    values: dict = dict(
        weight_format="keep",
        weight_except=(),
        transfer_format="f32",
        activation_format="q8_0",
        batch=1,
    )
    if draw(st.booleans()):
        values["weight_format"] = draw(st.sampled_from(["keep", "f32", "q8_0", "q4_0", "q4_1"]))
        values["weight_except"] = tuple(
            draw(st.lists(st.sampled_from(model.weight_names()), max_size=3))
        )
        names = values["weight_except"]
        excepted = f" except [{', '.join(names)}]" if names else ""
        written.append(f"quantize weights {values['weight_format']}{excepted}")
    if draw(st.booleans()):
        values["transfer_format"] = draw(st.sampled_from(["f32", "q8_0"]))
        written.append(f"quantize transfers {values['transfer_format']}")
    if draw(st.booleans()):
        values["activation_format"] = draw(st.sampled_from(["f32", "q8_0"]))
        written.append(f"quantize activations {values['activation_format']}")
    if draw(st.booleans()):
        written.append("batch 1")  # the only batch programs decode for now
    phase_decls = {}
    for phase in ScheduleDecl.PHASES:
        text, decl = draw(phases(lay, phase, model, cluster.node_names))
        written += [text] if text else []
        phase_decls[phase] = decl
    written = draw(st.permutations(written))
    schedule = ScheduleDecl(name, model.name, cluster.name, phases=phase_decls, **values)
    decls = draw(
        st.permutations([model_text, cluster_text, lay.block(f"schedule {name}", written)])
    )
    text = draw(st.sampled_from(["", "# spec\n", "\n;\n"])) + lay.sep().join(decls) + lay.sep()
    expected = Spec("gen.cke", {model.name: model}, {cluster.name: cluster}, {name: schedule})
    return text, expected


@settings(max_examples=120, deadline=None)
@given(specs())
def test_generated_specs_parse_to_the_ast_they_were_generated_from(case):
    text, expected = case
    assert parse_spec(text, "gen.cke") == expected


VALID = [(SPECS / f).read_text() for f in ("tiny.cke", "odd.cke", "hybrid.cke", "mha.cke")]
JUNK = 'abxyz0129.;:{}[]()<->"#=,/_ \t\n\r\\é\x00'


@st.composite
def mutants(draw):
    chars = list(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "replace"]))
        at = draw(st.integers(0, len(chars) - 1))
        if op == "delete":
            del chars[at]
        elif op == "insert":
            chars.insert(at, draw(st.sampled_from(JUNK)))
        else:
            chars[at] = draw(st.sampled_from(JUNK))
    return "".join(chars)


@settings(max_examples=400, deadline=None)
@given(mutants())
def test_mutated_specs_parse_or_fail_with_a_located_error(text):
    try:
        parse_spec(text, "mut.cke")
    except CkeError as err:
        assert err.loc is not None, err.message
        assert err.loc.file == "mut.cke" and err.loc.line >= 1 and err.loc.col >= 1
        assert err.loc.source_line is not None
        assert err.format().startswith(f"mut.cke:{err.loc.line}:{err.loc.col}: error: ")


# ---- hostile mutations -----------------------------------------------------------------

EXTREMES = [
    "0", "00", "1", "4097", "65536", "2147483648", "9223372036854775807",
    "18446744073709551616", "9" * 5000, "1e400", "1e-400", "1e999999999", "0.0", "1e30",
    "0.000000001", "3.5",
]  # fmt: skip
ODD_IMPORTS = [
    "/dev/zero", "/dev/urandom", "fifo.cke", "dir", "loop.cke", "mut.cke", "a\x00b.cke",
    "missing.cke", "",
]  # fmt: skip
TOKEN = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|[A-Za-z_][A-Za-z0-9_]*|\s+|.")
ALL_SPECS = [p.read_text() for p in sorted(SPECS.glob("*.cke"))]


@st.composite
def hostile_mutants(draw):
    tokens = TOKEN.findall(draw(st.sampled_from(ALL_SPECS)))
    numbers = [i for i, t in enumerate(tokens) if t[0].isdigit()]
    names = [i for i, t in enumerate(tokens) if t[0].isalpha() or t[0] == "_"]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["number", "name", "lines"]))
        if op == "number" and numbers:
            tokens[draw(st.sampled_from(numbers))] = draw(st.sampled_from(EXTREMES))
        elif op == "name" and names:
            at, other = draw(st.sampled_from(names)), draw(st.sampled_from(names))
            tokens[at] = tokens[other]
    lines = "".join(tokens).split("\n")
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "repeat", "swap", "import"]))
        if op == "delete":
            del lines[at]
        elif op == "repeat":
            lines.insert(at, lines[at])
        elif op == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        else:
            lines.insert(at, f'import "{draw(st.sampled_from(ODD_IMPORTS))}"')
    return "\n".join(lines)


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    """A directory where the odd imports exist: a FIFO, a directory, a symlink loop."""
    root = tmp_path_factory.mktemp("odd")
    os.mkfifo(root / "fifo.cke")
    (root / "dir").mkdir()
    os.symlink("loop2.cke", root / "loop.cke")
    os.symlink("loop.cke", root / "loop2.cke")
    return root


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=hostile_mutants())
def test_hostile_mutants_load_or_fail_located_in_bounded_time(bounded, odd_files, text):
    path = odd_files / "mut.cke"
    path.write_text(text)
    outcome = bounded(load_spec, path, seconds=30)
    assert outcome.kind in ("ok", "cke"), (outcome, text)
    if outcome.kind == "cke":
        assert outcome.loc is not None and outcome.loc.line >= 1, outcome


# ---- layer coverage as interval arithmetic -----------------------------------------------


@st.composite
def stagings(draw):
    """A layer count and stages with arbitrary (possibly overlapping, gapped, too long) ranges."""
    n_layers = draw(st.integers(1, 12))
    ranges = draw(
        st.lists(st.tuples(st.integers(0, 15), st.integers(0, 15)), min_size=1, max_size=5)
    )
    stages = tuple(
        StageDecl((f"n{i}",), min(r), max(r), loc=SourceLoc("t.cke", i + 1, 1, f"stage n{i}"))
        for i, r in enumerate(ranges)
    )
    return n_layers, ScheduleDecl("s", "m", "c", phases={"decode": PhaseDecl("decode", stages)})


def _runs(text: str) -> set[int]:
    """'layers 0..2, 5 belong ...' -> {0, 1, 2, 5}."""
    spans = re.match(r"layers? ([0-9., ]+) (?:do|does|belong|belongs)", text).group(1)
    out = set()
    for part in spans.split(", "):
        first, _, last = part.partition("..")
        out |= set(range(int(first), int(last or first) + 1))
    return out


@settings(max_examples=300, deadline=None)
@given(stagings())
def test_layer_coverage_agrees_with_counting_every_layer(case):
    """The interval checks say what a check of each layer one by one would say."""
    n_layers, sched = case
    stages = sched.phases["decode"].stages
    owners = {i: [s for s in stages if s.first <= i <= s.last] for i in range(16)}
    try:
        check_layer_coverage(sched, n_layers)
    except SpecError as err:
        line = err.loc.line if err.loc else None
        blamed = stages[line - 1] if line else None
        if "do not exist" in err.message or "does not exist" in err.message:
            first_long = next(s for s in stages if s.last >= n_layers)
            assert blamed is first_long
            assert _runs(err.message) == set(range(max(n_layers, blamed.first), blamed.last + 1))
        elif "another stage" in err.message:
            assert all(s.last < n_layers for s in stages)
            shared = _runs(err.message)
            assert shared and all(blamed in owners[i] and len(owners[i]) > 1 for i in shared)
        else:
            assert "no stage" in err.message
            assert all(s.last < n_layers for s in stages)
            assert all(len(owners[i]) <= 1 for i in range(n_layers))
            assert _runs(err.message) == {i for i in range(n_layers) if not owners[i]}
        return
    assert all(len(owners[i]) == 1 for i in range(n_layers))
    assert all(s.last < n_layers for s in stages)
