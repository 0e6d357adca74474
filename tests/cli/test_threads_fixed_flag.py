"""`ckec run --threads-fixed`: every token on all of a rank's threads; the same ids as a run
whose width adapts (the default)."""

from cli_runner import ckec
from widths import TWO_CORES_SPEC


def test_threads_fixed_gives_the_ids_of_an_adaptive_run(tmp_path):
    spec = tmp_path / "m.cke"
    spec.write_text(TWO_CORES_SPEC)
    runs = [
        ckec("run", spec, "--ids", "1,2,3", "-n", "40", *flags)
        for flags in ((), ("--threads-fixed",))
    ]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.strip()
