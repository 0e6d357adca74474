"""The dist dialect's module rule: across the rank programs of a phase, every send meets a
receive of the same bytes, and the ranks' sequences of communication cannot deadlock."""

import pytest

import ckeir
from ckeir.errors import VerifyError

FUNC = """  "cke.func"() ({{
  ^bb0(%a{r}: tensor<1xi32>, %p{r}: i64, %k{r}: memref<1x4x8xf32>, %v{r}: memref<1x4x8xf32>):
{body}
    "cke.return"() : () -> ()
  }}) {{phase = "decode", rank = {r} : i64, sym_name = "decode_r{r}"}} : () -> ()
"""
SEND = """    %s{n} = "dist.recv"() {{bytes = 32 : i64, peer = {peer} : i64}} : () -> tensor<1x8xf32>
    "dist.send"(%s{n}) {{bytes = {b} : i64, peer = {peer} : i64}} : (tensor<1x8xf32>) -> ()"""
RECV = """    %r{n} = "dist.recv"() {{bytes = {b} : i64, peer = {peer} : i64}} : () -> tensor<1x8xf32>"""


def module(rank0: str, rank1: str) -> str:
    return (
        '"builtin.module"() ({\n'
        + FUNC.format(r=0, body=rank0)
        + FUNC.format(r=1, body=rank1)
        + "}) : () -> ()\n"
    )


W = '    %w{n} = "cke.weight"() {{name = "t", shape = array<i64: 1, 8>}} : () -> tensor<1x8xf32>'
SEND_W = (
    '    "dist.send"(%w{n}) {{bytes = {b} : i64, peer = {peer} : i64}} : (tensor<1x8xf32>) -> ()'
)


def test_matching_pair_verifies():
    m = ckeir.parse_ir(
        module(
            "\n".join([W.format(n=0), SEND_W.format(n=0, b=32, peer=1)]),
            RECV.format(n=1, b=32, peer=0),
        )
    )
    ckeir.verify(m)


def test_both_ranks_receiving_first_deadlock():
    m = ckeir.parse_ir(module(SEND.format(n=0, b=32, peer=1), SEND.format(n=1, b=32, peer=0)))
    with pytest.raises(VerifyError, match="deadlock: rank 0 at dist.recv") as info:
        ckeir.verify(m)
    assert (info.value.loc.line, info.value.loc.col) == (4, 11)  # rank 0's recv, located


def test_send_without_receive():
    m = ckeir.parse_ir(
        module(
            '    %x = "dist.recv"() {bytes = 32 : i64, peer = 1 : i64} : () -> tensor<1x8xf32>\n'
            '    "dist.send"(%x) {bytes = 32 : i64, peer = 1 : i64} : (tensor<1x8xf32>) -> ()',
            "",
        )
    )
    with pytest.raises(VerifyError, match="deadlock"):
        ckeir.verify(m)


def test_byte_counts_must_agree():
    m = ckeir.parse_ir(
        module(
            '    %x = "cke.weight"() {name = "t", shape = array<i64: 1, 8>} : () -> tensor<1x8xf32>\n'
            '    "dist.send"(%x) {bytes = 32 : i64, peer = 1 : i64} : (tensor<1x8xf32>) -> ()',
            '    %y = "dist.recv"() {bytes = 64 : i64, peer = 0 : i64} : () -> tensor<1x8xf32>',
        )
    )
    with pytest.raises(VerifyError, match="sends 32 bytes to rank 1, which receives 64") as info:
        ckeir.verify(m)
    assert info.value.loc.line == 5  # the send


def test_compiled_distributed_module_verifies():
    from pathlib import Path

    spec = Path(__file__).resolve().parents[2] / "specs" / "hybrid.cke"
    prog = ckeir.compile(spec, backend="reference")
    ckeir.verify(prog.module)  # place + insert-collectives output satisfies the rule
