"""`ckec run`'s sampling flags: the ids the API draws with the same options (on one rank and
on local ranks), a seed that repeats them, --stop that cuts the text and ends the run there
(on every rank), and flags refused by name."""

import sys
from pathlib import Path

import pytest
from cli_runner import ckec

import ckeir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from run_evidence import pipeline_spec  # noqa: E402
from smollm2 import SPEC as SMOLLM2  # noqa: E402
from smollm2 import needs_smollm2  # noqa: E402
from widths import TWO_CORES_SPEC  # noqa: E402

TINY = Path(__file__).resolve().parents[2] / "specs" / "tiny.cke"
SMOLLM2_PIPELINE = Path(__file__).resolve().parents[2] / "specs" / "smollm2-pipeline.cke"
IDS = [3, 1, 4, 1, 5, 9]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("flags") / "m.cke"
    path.write_text(TWO_CORES_SPEC)
    return path


def run_ids(spec, *flags):
    r = ckec("run", spec, "--ids", ",".join(map(str, IDS)), "-n", "12", *flags)
    assert r.returncode == 0, r.stderr
    return [int(i) for i in r.stdout.strip().split(",")]


def test_seeded_flags_draw_what_the_api_draws(spec):
    flags = ("--temperature", "1.5", "--top-p", "0.9", "--seed", "42")
    drawn = run_ids(spec, *flags)
    assert run_ids(spec, *flags) == drawn
    with ckeir.compile(spec) as prog:
        assert prog.generate(IDS, 12, temperature=1.5, top_p=0.9, seed=42) == drawn
        greedy = prog.generate(IDS, 12)
    assert drawn != greedy
    assert run_ids(spec, "--temperature", "0", "--seed", "42") == greedy


@pytest.mark.parametrize(
    "flags, words",
    [
        (("--temperature", "-1"), "--temperature: expected a number in [0, 100]"),
        (("--top-k", "x"), "--top-k: expected an integer"),
        (("--top-p", "0"), "top_p must be above 0"),
        (("--stop", "x"), "--stop ends the text: give --prompt"),
    ],
)
def test_bad_flags_are_refused(spec, flags, words):
    r = ckec("run", spec, "--ids", "1,2", *flags)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert words in r.stderr, r.stderr


def test_local_ranks_draw_seeded_ids():
    """specs/tiny.cke on two local ranks (prefill tensor parallel, decode pipelined): the
    root rank draws, every rank follows; the API draws the same ids with the same seed."""
    flags = ("--temperature", "1.2", "--top-k", "50", "--seed", "3")
    r = ckec("run", TINY, "--ids", "1,2,3", "-n", "10", *flags)
    assert r.returncode == 0, r.stderr
    assert "2 local ranks" in r.stderr
    drawn = [int(i) for i in r.stdout.strip().split(",")]
    with ckeir.compile(TINY) as prog:
        assert prog.generate([1, 2, 3], 10, temperature=1.2, top_k=50, seed=3) == drawn
        assert prog.generate([1, 2, 3], 10) != drawn


def test_parity_of_a_seeded_draw_on_a_pipeline(tmp_path):
    """--check-parity runs the single-rank twin with the same flags: on a two-stage pipeline
    the seed draws the same ids from bitwise-equal logits; an unseeded draw is refused."""
    spec = pipeline_spec(tmp_path)
    args = ("run", spec, "--ids", "1,2,3", "-n", "8", "--temperature", "1.4", "--top-p", "0.95")
    r = ckec(*args, "--seed", "5", "--check-parity")
    assert r.returncode == 0, r.stderr
    assert "parity vs single rank: tokens identical (8)" in r.stderr, r.stderr
    assert "logits bitwise identical" in r.stderr
    assert r.stdout != ckec("run", spec, "--ids", "1,2,3", "-n", "8").stdout  # not greedy
    r = ckec(*args, "--check-parity")
    assert r.returncode == 1 and "give --seed" in r.stderr, r.stderr


@needs_smollm2
@pytest.mark.parametrize("spec", [SMOLLM2, SMOLLM2_PIPELINE], ids=["one rank", "pipeline"])
def test_stop_cuts_the_text_and_ends_the_run(spec):
    prompt = "List three colors: red, green,"
    r = ckec("run", spec, "--prompt", prompt, "-n", "40")
    assert r.returncode == 0, r.stderr
    full = r.stdout[len(prompt) :].rstrip("\n")
    stop = full[len(full) // 3 : len(full) // 3 + 3]  # a piece of what greedy writes
    assert stop and full.index(stop) > 0
    r = ckec("run", spec, "--prompt", prompt, "-n", "40", "--stop", stop)
    assert r.returncode == 0, r.stderr
    assert r.stdout == prompt + full[: full.index(stop)] + "\n"
    generated = int(r.stderr.split("generated ")[1].split()[0])
    assert generated < 40  # the run ended at the stop string (on every rank)
