"""`ckec run --report --no-predict`: the run's own figures without the prediction for this
machine, so the machine is not measured (the first report of a spec's shapes measures it for
seconds), and the report says why its predicted figures are null."""

import json
from pathlib import Path

from cli_runner import ckec

from ckeir.reports.run import NOT_PREDICTED

ODD = Path(__file__).resolve().parents[2] / "specs/odd.cke"


def test_no_predict_measures_nothing_and_says_why(tmp_path):
    """On an empty cache: the report has the run's figures, each predicted figure null with
    the reason stated, and no machine record was written (a run with the prediction first
    measures this machine into the cache's `machine/`)."""
    cache, report = tmp_path / "cache", tmp_path / "r.json"
    env = {"CKEIR_CACHE_DIR": str(cache)}
    r = ckec("run", ODD, "--ids", "1,2,3", "-n", "4", "--report", report, "--no-predict", env=env)
    assert r.returncode == 0, r.stderr
    assert cache.is_dir() and not (cache / "machine").exists()
    rep = json.loads(report.read_text())
    assert rep["prediction_absent"] == NOT_PREDICTED and "--no-predict" in NOT_PREDICTED
    assert rep["decode"]["predicted_seconds_per_token"] is None
    assert rep["prediction_basis"] is None
    # the run's own figures are all there
    assert (rep["prompt_tokens"], rep["generated_tokens"]) == (3, 4)
    assert rep["decode"]["seconds_per_token"] > 0 and rep["active_bytes_per_token"] > 0
    assert "CKU" in r.stderr


def test_no_predict_without_a_report_is_refused_before_the_run():
    """Without --report there is no prediction to leave out: the flag would do nothing."""
    r = ckec("run", ODD, "--ids", "1,2,3", "--no-predict")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "error: --no-predict: only the run report holds a prediction" in r.stderr
    assert "reading the spec" not in r.stderr
