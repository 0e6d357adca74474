"""What the tests of a pool's width (`ckeir.backends.llvm.width`) share: a model small enough
to compile in seconds, on a node of 2 cores, and a policy whose widths a test dictates."""

import itertools

from ckeir.backends.llvm.width import WidthPolicy

# One node of 2 cores: a pool of 2 threads, whose runs may take 1 or 2.
TWO_CORES_SPEC = """
model m {
  family llama; vocab 256; hidden 128; layers 2; heads 4; kv_heads 2; ffn 256
  norm_eps 1e-5; rope_theta 10000; context 128; weights random(seed = 11)
}
cluster c { node n0 { cores 2; dram 8GiB; dram_bw 10GB/s; l2 1MiB; l3 32MiB } }
schedule s { run m on c; quantize weights q8_0 }
"""


class Forced(WidthPolicy):
    """The real policy's record (tokens and runs per width), but the widths come from
    `order`, one per run, over and over."""

    def __init__(self, order, threads: int = 2):
        super().__init__(threads)
        self.order = itertools.cycle(order)

    def choose(self, phase):
        return next(self.order)
