"""`ckec run --[no-]huge-pages`: where the run's weights and arenas were, from its report."""

import json

from cli_runner import ckec
from needs import needs_thp
from runtime.smollm2 import SPEC, needs_smollm2

pytestmark = [needs_smollm2, needs_thp]


def _run(tmp_path, *flags, spec=SPEC) -> tuple[dict, str]:
    """Every rank's `linux.huge_pages` and the ids the run printed."""
    report = tmp_path / f"report{len(flags)}.json"
    r = ckec("run", spec, "--ids", "1,2,3", "-n", "4", *flags, "--report", report, "--no-predict")
    assert r.returncode == 0, r.stderr
    return json.loads(report.read_text())["linux"]["huge_pages"], r.stdout


def test_no_huge_pages_keeps_weights_and_arena_off_them_with_the_same_ids(tmp_path):
    (on, ids_on), (off, ids_off) = _run(tmp_path), _run(tmp_path, "--no-huge-pages")
    on, off = on["0"], off["0"]
    assert on["weights"]["huge_page_bytes"] > on["weights"]["bytes"] // 2
    assert off["weights"]["huge_page_bytes"] == 0
    assert off["arena"]["huge_page_bytes"] == 0
    assert ids_on == ids_off and ids_on.strip()


def test_no_huge_pages_reaches_every_local_rank(tmp_path):
    """Tensor parallel on local ranks: each rank's weights and arena stay off huge pages."""
    ranks, _ = _run(tmp_path, "--no-huge-pages", spec=SPEC.parent / "smollm2-tp.cke")
    assert set(ranks) == {"0", "1"}
    for rank in ranks.values():
        assert rank["arena"]["bytes"] > 1 << 20  # large enough to be put on huge pages
        assert rank["weights"]["huge_page_bytes"] == 0
        assert rank["arena"]["huge_page_bytes"] == 0
