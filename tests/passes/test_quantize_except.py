"""quantize's `weight_except` names weights of the module: a name that matches none (a typo
on `ckec opt --weight-except`) is a PassError listing the names it could be, not a silent
quantization of what the user meant to keep."""

from __future__ import annotations

from pathlib import Path

from cli_runner import ckec

from ckeir.driver import build_ir, resolve
from ckeir.ir import print_ir

TINY = Path(__file__).resolve().parents[2] / "specs" / "tiny.cke"


def quantize(tmp_path, *names):
    ir = tmp_path / "tiny.mlir"
    ir.write_text(print_ir(build_ir(resolve(TINY))))
    args = [a for n in names for a in ("--weight-except", n)]
    return ckec("opt", ir, "--pass-pipeline=shape-infer,quantize", "--weight-format=q8_0", *args)


def test_an_unknown_name_is_refused(tmp_path):
    r = quantize(tmp_path, "token_embd", "outptu")
    assert r.returncode == 1, r.stderr
    assert "quantize: no weight is named 'outptu' (weight_except)" in r.stderr
    assert "output.weight" in r.stderr  # the hint lists what it could be


def test_known_names_with_or_without_the_suffix_keep_their_format(tmp_path):
    r = quantize(tmp_path, "token_embd", "output.weight")
    assert r.returncode == 0, r.stderr
    assert '"token_embd.weight", shape = array<i64: 512, 128>} : () -> tensor<512x128xf32>' in (
        r.stdout
    )
    assert "tensor<512x128xf32>" in r.stdout and "x!cke.q8_0>" in r.stdout
