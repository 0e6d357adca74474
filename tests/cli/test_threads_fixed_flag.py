"""`ckec run --threads-fixed`: every token on all of a rank's threads; the same ids as a run
whose width adapts (the default)."""

from cli_runner import ckec

SPEC = """
model m {
  family llama; vocab 256; hidden 128; layers 2; heads 4; kv_heads 2; ffn 256
  norm_eps 1e-5; rope_theta 10000; context 128; weights random(seed = 11)
}
cluster c { node n0 { cores 2; dram 8GiB; dram_bw 10GB/s; l2 1MiB; l3 32MiB } }
schedule s { run m on c; quantize weights q8_0 }
"""


def test_threads_fixed_gives_the_ids_of_an_adaptive_run(tmp_path):
    spec = tmp_path / "m.cke"
    spec.write_text(SPEC)
    runs = [
        ckec("run", spec, "--ids", "1,2,3", "-n", "40", *flags)
        for flags in ((), ("--threads-fixed",))
    ]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.strip()
