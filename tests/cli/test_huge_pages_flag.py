"""`ckec run --[no-]huge-pages`: where the run's weights and arenas were, from its report."""

import json

from cli_runner import ckec
from needs import needs_thp
from runtime.smollm2 import SPEC, needs_smollm2

pytestmark = [needs_smollm2, needs_thp]


def _run(tmp_path, *flags) -> tuple[dict, str]:
    """Rank 0's `linux.huge_pages` and the ids the run printed."""
    report = tmp_path / f"report{len(flags)}.json"
    r = ckec("run", SPEC, "--ids", "1,2,3", "-n", "4", *flags, "--report", report)
    assert r.returncode == 0, r.stderr
    return json.loads(report.read_text())["linux"]["huge_pages"]["0"], r.stdout


def test_no_huge_pages_keeps_weights_and_arena_off_them_with_the_same_ids(tmp_path):
    on, ids_on = _run(tmp_path)
    off, ids_off = _run(tmp_path, "--no-huge-pages")
    assert on["weights"]["huge_page_bytes"] > on["weights"]["bytes"] // 2
    assert off["weights"]["huge_page_bytes"] == 0
    assert off["arena"]["huge_page_bytes"] == 0
    assert ids_on == ids_off and ids_on.strip()
