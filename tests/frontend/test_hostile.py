"""Hostile specs: small texts that used to cost unbounded work, or nonsense that was accepted.

Each must end, within a bounded time and memory (see conftest.run_bounded), in a SpecError
located at the offending spot of the file, with the line and a caret.
"""

import os
import re
from pathlib import Path

import pytest
from cli_runner import ckec

from ckeir import limits
from ckeir.errors import SpecError
from ckeir.frontend import check_layer_coverage, load_spec, parse_spec, with_model_params

SPECS = Path(__file__).resolve().parents[2] / "specs"
TINY = (SPECS / "tiny.cke").read_text()
SECONDS = 30  # a generous bound that catches a hang; every case takes milliseconds


def tiny(old: str, new: str) -> str:
    assert TINY.count(old) == 1, old
    return TINY.replace(old, new)


def refused(outcome, message: str, at: str, file: str = "t.cke"):
    """The outcome is a located SpecError whose message contains `message`, pointing at `at`."""
    assert outcome.kind == "cke", outcome
    assert message in outcome.message
    assert outcome.loc is not None and outcome.loc.file == file
    assert outcome.where().startswith(at), outcome.text
    head = f"{file}:{outcome.loc.line}:{outcome.loc.col}: error: "
    assert outcome.text.startswith(head) and outcome.text.splitlines()[2].strip() == "^"


HUGE_DIGITS = "9" * 5000

HOSTILE = {
    # bounded work: each of these hung, grew memory or crashed before it was checked
    "layer range to 2**63": (
        ("stage n1 layers 2..3", "stage n1 layers 2..9223372036854775807"),
        "layers 4..9223372036854775807 do not exist: model tiny has 4 layers",
        "stage n1",
    ),
    "2**31 layers": (
        ("layers     4", "layers     2147483648"),
        "layers of model tiny must be between 1 and 4096, not 2147483648",
        "layers     2147483648",
    ),
    "a million layers": (
        ("layers     4", "layers     1000000"),
        "layers of model tiny must be between 1 and 4096",
        "layers     1000000",
    ),
    "a size with a huge exponent": (
        ("dram 24GiB", "dram 1e999999999GiB"),
        "a size must be between 1 B and 1073741824 GiB, not 1e999999999GiB",
        "1e999999999GiB",
    ),
    "a number of 5000 digits": (
        ("vocab      512", f"vocab      {HUGE_DIGITS}"),
        "a number of 5000 digits is too long (at most 64)",
        "999",
    ),
    "a real of 5000 digits": (
        ("norm_eps   1e-5", f"norm_eps   0.{HUGE_DIGITS}"),
        "a number of 5001 digits is too long",
        "0.999",
    ),
    "a rate of 1e400": (
        ("bw 10Gbit/s", "bw 1e400Gbit/s"),
        "a rate must be between 1 B/s and 1000000 GB/s, not 1e400Gbit/s",
        "1e400Gbit/s",
    ),
    # nonsense that was accepted
    "kv_heads 0": (
        ("kv_heads   2", "kv_heads   0"),
        "kv_heads of model tiny must be between 1 and 4096, not 0",
        "kv_heads   0",
    ),
    "norm_eps 1e30": (
        ("norm_eps   1e-5", "norm_eps   1e30"),
        "norm_eps of model tiny must be between 1e-30 and 1",
        "norm_eps   1e30",
    ),
    "norm_eps 1e400": (
        ("norm_eps   1e-5", "norm_eps   1e400"),
        "norm_eps of model tiny must be between 1e-30 and 1, not inf",
        "norm_eps   1e400",
    ),
    "rope_theta 1e400": (
        ("rope_theta 10000", "rope_theta 1e400"),
        "rope_theta of model tiny must be between 1 and 1e+12",
        "rope_theta 1e400",
    ),
    "batch 10**30": (
        ("batch 1", "batch 1" + "0" * 30),
        "batch must be between 1 and 4096",
        "batch 1000",
    ),
    "a zero latency": (
        ("latency 50us", "latency 0us"),
        "a time must be between 1 ns and 3600 s, not 0us",
        "0us",
    ),
    "cores beyond any machine": (
        ("cores 2", "cores 99999999"),
        "cores of node n0 must be between 1 and 16384, not 99999999",
        "cores 99999999",
    ),
    "a memory beyond any machine": (
        ("l3 32MiB", "l3 2000000000GiB"),
        "a size must be between 1 B and 1073741824 GiB",
        "2000000000GiB",
    ),
    "bandwidths a million-fold apart in one stage": (
        ("node n1 { like n0 }", "node n1 { like n0; dram_bw 10KB/s }"),
        "the nodes of this stage differ too much in dram_bw: n0 is 2e+06 times faster than n1",
        "stage [n0, n1]",
    ),
    "except a weight the model does not have": (
        ("except [token_embd]", "except [token_embd, nonexistent]"),
        "model tiny has no weight 'nonexistent' to leave unquantized",
        "nonexistent]",
    ),
    "more tensor-parallel nodes than a key/value head's query heads": (
        ("heads      4\n  kv_heads   2", "heads      1\n  kv_heads   1"),
        "stage [n0, n1] has 2 nodes but model tiny has 1 key/value head of 1 query heads each",
        "stage [n0, n1]",
    ),
    "more tensor-parallel nodes than vocabulary entries": (
        ("vocab      512", "vocab      1"),
        "stage [n0, n1] has 2 nodes but model tiny has only 1 vocabulary entry",
        "stage [n0, n1]",
    ),
    "a NUL in a weights path": (
        ("random(seed = 7)", 'gguf("m\x00.gguf")'),
        "a path cannot contain a NUL character",
        '"m\x00',
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_spec_is_refused_at_its_location_in_bounded_time(bounded, case):
    (old, new), message, at = HOSTILE[case]
    outcome = bounded(parse_spec, tiny(old, new), "t.cke", seconds=SECONDS)
    refused(outcome, message, at)


def test_an_auto_phase_checks_the_bandwidth_skew_of_the_whole_cluster():
    text = tiny("node n1 { like n0 }", "node n1 { like n0; dram_bw 10KB/s }")
    text = text.replace("phase prefill { stage [n0, n1] layers 0..3 }", "phase prefill { auto }")
    text = re.sub(r"phase decode  \{[^}]*\}", "", text)
    with pytest.raises(SpecError) as err:
        parse_spec(text, "t.cke")
    assert err.value.message.startswith("the nodes of cluster pair differ too much in dram_bw")
    assert err.value.loc.source_line.strip().startswith("phase prefill { auto }")


def cores_of(text: str, node: str) -> int:
    return parse_spec(text).clusters["pair"].node(node).cores


def test_a_reversed_chain_of_like_copies_resolves(bounded):
    """Each node copies the one declared after it: the chain is walked once, not per node."""
    chain = "\n".join(f"  node m{i} {{ like m{i + 1} }}" for i in range(4000))
    text = tiny(
        "  node n1 { like n0 }", f"  node n1 {{ like n0 }}\n{chain}\n  node m4000 {{ like n0 }}"
    )
    outcome = bounded(cores_of, text, "m0")
    assert (outcome.kind, outcome.message) == ("ok", "2"), outcome


def test_except_output_is_refused_when_the_output_is_tied_to_the_embedding():
    text = tiny("except [token_embd]", "except [output]")
    assert parse_spec(text).schedule().weight_except == ("output",)
    assert parse_spec(tiny("except [token_embd]", "except [output_norm]"))
    with pytest.raises(SpecError) as err:
        parse_spec(text.replace("rope_theta", "tie_embeddings true\n  rope_theta"), "t.cke")
    assert err.value.message == "model tiny has no weight 'output' to leave unquantized"
    assert err.value.hint == "model tiny ties its output to token_embd"


def test_a_long_chain_of_like_copies_resolves(bounded):
    """3000 nodes each `like` the one before: recursion used to overflow Python's stack."""
    chain = "\n".join(f"  node n{i} {{ like n{i - 1} }}" for i in range(2, 3000))
    text = tiny("  node n1 { like n0 }", f"  node n1 {{ like n0 }}\n{chain}")
    outcome = bounded(cores_of, text, "n2999")
    assert (outcome.kind, outcome.message) == ("ok", "2"), outcome


def test_too_many_nodes_are_refused_at_the_first_one_too_many():
    nodes = "\n".join(f"  node m{i} {{ like n0 }}" for i in range(limits.MAX_NODES))
    with pytest.raises(SpecError) as err:
        parse_spec(tiny("  node n1 { like n0 }", f"  node n1 {{ like n0 }}\n{nodes}"), "t.cke")
    assert err.value.message == "cluster pair has 4098 nodes, more than 4096"
    assert err.value.loc.source_line.strip() == f"node m{limits.MAX_NODES - 2} {{ like n0 }}"


def test_gaps_are_named_as_ranges():
    text = tiny("layers     4", "layers     8").replace(
        "stage [n0, n1] layers 0..3", "stage [n0, n1] layers 0..7"
    )
    text = text.replace("stage n0 layers 0..1", "stage n0 layers 3..4")
    text = text.replace("stage n1 layers 2..3", "stage n1 layers 6")
    with pytest.raises(SpecError) as err:
        parse_spec(text, "t.cke")
    assert err.value.message == "layers 0..2, 5, 7 belong to no stage of phase decode"


def test_a_stage_range_of_a_file_model_is_bounded_before_the_layer_count_is_known():
    text = (
        tiny("weights    random(seed = 7)", 'weights    gguf("m.gguf")')
        .replace("layers     4\n", "")
        .replace("layers 2..3", "layers 2..9223372036854775807")
    )
    with pytest.raises(SpecError) as err:
        parse_spec(text, "t.cke")
    assert err.value.message == (
        "layers 4096..9223372036854775807 do not exist: a model has at most 4096 layers"
    )
    assert err.value.loc.source_line.strip() == "stage n1 layers 2..9223372036854775807"


def test_a_stage_past_the_last_layer_of_a_file_model_is_found_when_the_count_arrives(bounded):
    text = tiny("weights    random(seed = 7)", 'weights    gguf("m.gguf")')
    text = text.replace("layers     4\n", "").replace("layers 2..3", "layers 2..4095")
    spec = parse_spec(text, "t.cke")
    outcome = bounded(check_layer_coverage, spec.schedule(), 4)
    assert outcome.kind == "cke" and outcome.message.startswith("layers 4..4095 do not exist")


# ---- hyper-parameters from a weights file ------------------------------------------------


FILE_MODEL = tiny("weights    random(seed = 7)", 'weights    gguf("m.gguf")')
FILE_MODEL = re.sub(
    r"\n  (vocab|hidden|layers|heads|kv_heads|ffn|context|norm_eps|rope_theta)\s+\S+",
    "",
    FILE_MODEL,
)
PARAMS = dict(vocab=512, hidden=128, layers=4, heads=4, kv_heads=2, ffn=256, context=256)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("layers", 10**6, "layers of model tiny must be between 1 and 4096, not 1000000"),
        ("hidden", "576", "hidden of model tiny must be between 1 and "),
        ("heads", [4], "heads of model tiny must be between 1 and 4096, not [4]"),
        ("norm_eps", float("nan"), "norm_eps of model tiny must be between 1e-30 and 1, not nan"),
        ("rope_theta", 0.0, "rope_theta of model tiny must be between 1 and 1e+12, not 0.0"),
        ("context", True, "context of model tiny must be between 1 and "),
    ],
)
def test_file_parameters_of_the_wrong_type_or_range_are_refused(bounded, key, value, message):
    spec = parse_spec(FILE_MODEL, "t.cke")
    outcome = bounded(with_model_params, spec, "tiny", dict(PARAMS, **{key: value}), "m.gguf")
    assert outcome.kind == "cke", outcome
    assert outcome.message.startswith(message)
    assert outcome.loc.file == "t.cke"  # the model that reads the file


# ---- reading spec files ------------------------------------------------------------------


def import_outcome(bounded, tmp_path: Path, target: str):
    main = tmp_path / "main.cke"
    main.write_text(f'import "{target}"\n')
    return bounded(load_spec, main, seconds=SECONDS)


@pytest.mark.parametrize(
    "target, reason",
    [
        ("/dev/zero", "it is a character device, not a regular file"),
        ("/dev/urandom", "it is a character device, not a regular file"),
        ("fifo.cke", "it is a FIFO, not a regular file"),
        ("somedir", "it is a directory, not a regular file"),
        ("loop.cke", "Too many levels of symbolic links"),
        ("huge.cke", "is larger than 256.0 KiB"),
    ],
)
def test_an_import_reads_only_a_regular_file_of_bounded_size(bounded, tmp_path, target, reason):
    os.mkfifo(tmp_path / "fifo.cke")
    (tmp_path / "somedir").mkdir()
    os.symlink("loop2.cke", tmp_path / "loop.cke")
    os.symlink("loop.cke", tmp_path / "loop2.cke")
    (tmp_path / "huge.cke").write_text("#" * limits.MAX_SPEC_BYTES + "\n")
    outcome = import_outcome(bounded, tmp_path, target)
    refused(outcome, reason, f'import "{target}"', file=str(tmp_path / "main.cke"))
    assert "cannot read spec file" in outcome.message or "spec file" in outcome.message


def test_a_nul_in_an_import_path_is_refused_at_the_path(bounded, tmp_path):
    outcome = import_outcome(bounded, tmp_path, "a\x00b.cke")
    refused(outcome, "a path cannot contain a NUL character", '"a\x00b', str(tmp_path / "main.cke"))


def test_non_utf8_text_is_refused_at_its_first_bad_byte(bounded, tmp_path):
    (tmp_path / "bad.cke").write_bytes(b"# ok\nmodel m { family ll\xffama }\n")
    outcome = import_outcome(bounded, tmp_path, "bad.cke")
    assert outcome.kind == "cke", outcome
    assert outcome.message == f"spec file {tmp_path / 'bad.cke'} is not UTF-8 text (byte 0xff)"
    assert (outcome.loc.file, outcome.loc.line, outcome.loc.col) == (
        str(tmp_path / "bad.cke"),
        2,
        20,
    )


def test_import_depth_is_bounded(bounded, tmp_path):
    depth = limits.MAX_IMPORT_DEPTH + 6
    for i in range(depth):
        (tmp_path / f"f{i}.cke").write_text(f'import "f{i + 1}.cke"\n')
    (tmp_path / f"f{depth}.cke").write_text("")
    outcome = bounded(load_spec, tmp_path / "f0.cke", seconds=SECONDS)
    assert outcome.kind == "cke", outcome
    assert outcome.message == "imports nest more than 64 files deep"
    assert outcome.loc.file == str(tmp_path / f"f{limits.MAX_IMPORT_DEPTH - 1}.cke")


def test_the_same_file_under_another_name_is_read_once(tmp_path):
    (tmp_path / "a.cke").write_text((SPECS / "tiny.cke").read_text())
    os.symlink("a.cke", tmp_path / "b.cke")
    (tmp_path / "main.cke").write_text('import "a.cke"\nimport "b.cke"\n')
    assert list(load_spec(tmp_path / "main.cke").models) == ["tiny"]


def test_a_cycle_through_a_symlink_is_an_import_cycle(tmp_path):
    (tmp_path / "a.cke").write_text('import "link.cke"\n')
    os.symlink("a.cke", tmp_path / "link.cke")
    with pytest.raises(SpecError) as err:
        load_spec(tmp_path / "a.cke")
    assert err.value.message == "import cycle: a.cke -> link.cke"


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/urandom", "."])
def test_the_top_level_spec_file_gets_the_same_rules(bounded, path):
    outcome = bounded(load_spec, path, seconds=SECONDS)
    assert outcome.kind == "cke", outcome
    assert outcome.message.startswith(f"cannot read spec file {path}: it is a ")


def test_ckec_on_a_spec_importing_a_fifo_fails_at_once_with_the_import_located(tmp_path):
    os.mkfifo(tmp_path / "pipe.cke")
    (tmp_path / "main.cke").write_text('# main\nimport "pipe.cke"\n')
    result = ckec("plan", tmp_path / "main.cke", timeout=60)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"{tmp_path / 'main.cke'}:2:1: error: cannot read spec file "
        f"{tmp_path / 'pipe.cke'}: it is a FIFO, not a regular file"
    )
    assert lines[1].strip() == 'import "pipe.cke"' and lines[2].strip() == "^"


def test_a_stated_parameter_the_file_gives_as_another_type_disagrees(bounded):
    stated = FILE_MODEL.replace("family     llama", "family     llama\n  norm_eps 1e-5")
    spec = parse_spec(stated, "t.cke")
    params = dict(PARAMS, norm_eps="1e-5")
    outcome = bounded(with_model_params, spec, "tiny", params, "m.gguf")
    assert outcome.kind == "cke", outcome
    assert outcome.message == "norm_eps 1e-05 disagrees with m.gguf, which has 1e-5"


def test_a_spec_text_larger_than_the_limit_is_refused_naming_it():
    text = TINY + "#" * limits.MAX_SPEC_BYTES
    with pytest.raises(SpecError) as err:
        parse_spec(text, "big.cke")
    assert err.value.message == "spec big.cke is larger than 256.0 KiB; split it with `import`"


@pytest.mark.parametrize("ffn", ["ffn 48", "ffn 32"])
def test_a_tensor_parallel_stage_needs_whole_ffn_blocks_for_each_node(ffn):
    """The place pass gives each node of a stage whole 32-row blocks of the FFN; a width that
    cannot be split so is refused at the stage, not by the pass without a location."""
    with pytest.raises(SpecError) as err:
        parse_spec(tiny("ffn        256", f"{ffn}"), "t.cke")
    assert "is not 2 or more whole blocks of 32" in err.value.message
    assert err.value.loc is not None and "stage [n0, n1]" in err.value.loc.source_line
