"""`ckec run`'s sampling flags: the ids the API draws with the same options, a seed that
repeats them, --stop that cuts the text and ends the run there, and flags refused by name."""

import sys
from pathlib import Path

import pytest
from cli_runner import ckec

import ckeir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from smollm2 import SPEC as SMOLLM2  # noqa: E402
from smollm2 import needs_smollm2  # noqa: E402
from widths import TWO_CORES_SPEC  # noqa: E402

TINY = Path(__file__).resolve().parents[2] / "specs" / "tiny.cke"
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


def test_several_ranks_decode_greedily_for_now():
    r = ckec("run", TINY, "--ids", "1,2", "--temperature", "1")
    assert r.returncode == 1 and "decode greedily for now" in r.stderr, r.stderr


@needs_smollm2
def test_stop_cuts_the_text_and_ends_the_run():
    prompt = "List three colors: red, green,"
    r = ckec("run", SMOLLM2, "--prompt", prompt, "-n", "40")
    assert r.returncode == 0, r.stderr
    full = r.stdout[len(prompt) :].rstrip("\n")
    stop = full[len(full) // 3 : len(full) // 3 + 3]  # a piece of what greedy writes
    assert stop and full.index(stop) > 0
    r = ckec("run", SMOLLM2, "--prompt", prompt, "-n", "40", "--stop", stop)
    assert r.returncode == 0, r.stderr
    assert r.stdout == prompt + full[: full.index(stop)] + "\n"
    generated = int(r.stderr.split("generated ")[1].split()[0])
    assert generated < 40  # the run ended at the stop string
