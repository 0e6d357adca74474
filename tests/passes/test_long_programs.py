"""A long program costs time in proportion to its length: 30,000 ops through `ckec opt` and
plan-memory take seconds.  plan-memory compared each buffer with every one placed before
it (and the parser rescanned the text for each op's location): minutes at this length.
The timeout only catches that; it is far above the linear time."""

from __future__ import annotations

from cli_runner import ckec

OPS = 30_000


def chain(n: int) -> str:
    """A decode func embedding one row and adding it to itself n times."""
    lines = [
        '"builtin.module"() ({',
        '  "cke.func"() ({',
        "  ^bb0(%ids: tensor<1xi32>, %pos: i64, %k: memref<1x8x16xf32>, %v: memref<1x8x16xf32>):",
        '    %w = "cke.weight"() {name = "token_embd.weight", shape = array<i64: 64, 16>} : () -> '
        "tensor<64x16xf32>",
        '    %x0 = "cke.embed"(%ids, %w) : (tensor<1xi32>, tensor<64x16xf32>) -> tensor<1x16xf32>',
    ]
    row = "(tensor<1x16xf32>, tensor<1x16xf32>) -> tensor<1x16xf32>"
    lines += [f'    %x{i + 1} = "cke.add"(%x{i}, %x{i}) : {row}' for i in range(n)]
    lines += [
        f'    "cke.return"(%x{n}) : (tensor<1x16xf32>) -> ()',
        '  }) {phase = "decode", sym_name = "decode"} : () -> ()',
        "}) : () -> ()",
    ]
    return "\n".join(lines) + "\n"


def test_a_long_program_is_planned_in_linear_time(tmp_path):
    path = tmp_path / "chain.mlir"
    path.write_text(chain(OPS))
    r = ckec("opt", path, "--pass-pipeline=plan-memory", timeout=120)
    assert r.returncode == 0, r.stderr
    # Each sum lives until the next add reads it: two row buffers (64 bytes each) suffice.
    assert "arena_bytes = 128 : i64" in r.stdout
