"""Where a decode token's time goes, op by op, in the real run: each spec's decode entry is
lowered with a time-stamp counter read at every op boundary of every pool thread (before
the op's barrier and after it), so each op's time is split into the work its thread did
and its wait for the op's last part, in place, with the caches and the other ops as they
are in a run.  Specs are compiled side by side and decoded in interleaved rounds; the
counters accumulate over the rounds' decode steps.

Per spec, from its fastest round: every kernel the decode entry calls (by kernel name:
shapes and formats), how many calls a token makes, ms per token of work (threads 0 and 1)
and of thread 0's barrier wait (thread 0's clock decides the token), its share of the
token, and for matmuls the weight bytes over the op's time; plus the share of the token
spent outside the entry (Python, the pool's start).  The stamps add ~30 cycles per op per
thread.  With `--against REV`, every spec is also compiled with REV's
`kernels/matmul.py` (the float-weight matmuls) and decoded in the same rounds.

    python -m benchmarks.decode_ops SPEC [SPEC...] [--threads 2] [--rounds 5] [--tokens 64]
                                    [--against REV] [--json FILE]

The pool runs at its full width (`CKEIR_ADAPTIVE_THREADS=0`): a one-thread probe would
mix another schedule into the figures.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks.common import common_args, host_description, host_line, log, print_table, write_json

PROMPT = "Once upon a time"
MAX_THREADS = 8
IDLE_BETWEEN = 0.2


# ---- the instrumented lowering ------------------------------------------------------------


class Stamps:
    """Per entry symbol: the ops its scheduler emitted (index -> kernel name) and the global
    array the stamps accumulate in: per thread, [last stamp, (work, wait) per op...]."""

    def __init__(self):
        from ckeir.backends.llvm.kernels import sync

        self.stride = ((1 + 2 * (sync.MAX_OPS + 1)) + 7) // 8 * 8
        self.ops: dict[str, dict[int, str]] = defaultdict(dict)

    def global_name(self, symbol: str) -> str:
        return f"cke_prof.{symbol}"

    def globals_ir(self) -> str:
        n = self.stride * MAX_THREADS
        return "\n".join(
            f"@{self.global_name(s)} = global [{n} x i64] zeroinitializer, align 64"
            for s in self.ops
        )

    def emit(self, f, index: int | None, kind: int) -> None:
        """Thread %tid: add (now - last) to op `index`'s work (kind 0) or wait (kind 1)
        slot, then last = now; index None only sets last."""
        g = f"@{self.global_name(f.name)}"
        self.ops.setdefault(f.name, {})
        now = f.intrinsic("i64", "llvm.readcyclecounter", [])
        tid = f("zext i32 %tid to i64", "ptid")
        base = f.mul(tid, self.stride)
        last_p = f.gep(g, base, "i64")
        if index is not None:
            slot_p = f.gep(g, f.add(base, 1 + 2 * index + kind), "i64")
            spent = f(f"sub i64 {now}, {f.load('i64', last_p, 8)}", "spent")
            f.store("i64", f(f"add i64 {f.load('i64', slot_p, 8)}, {spent}", "acc"), slot_p)
        f.store("i64", now, last_p)

    def install(self) -> None:
        """Patch the scheduler and the lowering (this process only)."""
        from ckeir import api
        from ckeir.backends.llvm import lower, schedule

        stamps, sched = self, schedule.Scheduler
        init, call, wait, once = sched.__init__, sched.call, sched._wait, sched.once

        def init_(self, f, state, kernels):
            init(self, f, state, kernels)
            stamps.emit(f, None, 0)

        def call_(self, kernel, args, parts=None):
            stamps.ops[self.f.name][self.ops + 1] = kernel.name
            return call(self, kernel, args, parts)

        def once_(self):
            stamps.ops[self.f.name][self.ops + 1] = "(one thread)"
            return once(self)

        def wait_(self, seq, parts):
            stamps.emit(self.f, self.ops, 0)
            wait(self, seq, parts)
            stamps.emit(self.f, self.ops, 1)

        sched.__init__, sched.call, sched._wait, sched.once = init_, call_, wait_, once_
        plain = lower.lower_module

        def lower_module(module, host, rank=None):
            lowered = plain(module, host, rank)
            return type(lowered)(lowered.text + "\n" + self.globals_ir() + "\n", lowered.programs)

        # never the disk cache's lowering (it has no stamps); object code is keyed by text
        api.lower_module_cached = lambda m, h, rank=None: (lower_module(m, h, rank), False)

    def read(self, compiled, symbol: str) -> np.ndarray:
        """(threads, MAX_OPS + 1, 2) cycles accumulated so far (index 0 unused)."""
        from ckeir.backends.llvm.kernels import sync

        addr = compiled._engine.get_global_value_address(self.global_name(symbol))
        n = self.stride * MAX_THREADS
        arr = np.ctypeslib.as_array((ctypes.c_int64 * n).from_address(addr))
        ops = sync.MAX_OPS + 1
        return arr.reshape(MAX_THREADS, self.stride)[:, 1 : 1 + 2 * ops].reshape(
            MAX_THREADS, ops, 2
        )

    def reset(self, compiled, symbol: str) -> None:
        addr = compiled._engine.get_global_value_address(self.global_name(symbol))
        ctypes.memset(addr, 0, self.stride * MAX_THREADS * 8)


def tsc_hz() -> float:
    """The time-stamp counter's rate, against perf_counter over 0.2 s."""
    from ckeir.backends.llvm.jit import compile_ir

    m = compile_ir(
        "declare i64 @llvm.readcyclecounter()\n"
        "define i64 @tsc() {\n  %t = call i64 @llvm.readcyclecounter()\n  ret i64 %t\n}\n",
        use_cache=False,
    )
    read = ctypes.CFUNCTYPE(ctypes.c_int64)(m.address("tsc"))
    t0, c0 = time.perf_counter(), read()
    time.sleep(0.2)
    t1, c1 = time.perf_counter(), read()
    return (c1 - c0) / (t1 - t0)


# ---- the run ------------------------------------------------------------------------------


def label(kernel: str) -> str:
    """A kernel name without its vector width and tile: what the op is."""
    kernel = re.sub(r"_t\d+(x\d+)?(?=_|$)", "", kernel)  # a matmul's tile
    return re.sub(r"_(v\d+|vnni|sw16)$", "", kernel)  # the vector width or ISA path


def weight_bytes(kernel: str) -> int | None:
    """Bytes of weights one call of a matmul kernel reads (from its name), else None."""
    from ckeir.formats import FORMATS

    m = re.match(r"q?matmul_(\w+?)_n(\d+)_k(\d+)_", kernel)
    if m is None or m.group(1) not in FORMATS:
        return None
    return int(m.group(2)) * FORMATS[m.group(1)].row_bytes(int(m.group(3)))


def decode_symbol(prog) -> str:
    (abi,) = [abi for abi in prog.lowered.programs.values() if abi.phase == "decode"]
    return abi.symbol


def compile_all(specs: list[str], against: str | None, threads: int, stamps: Stamps):
    """label -> (program, {op index: kernel name}): each spec as this tree compiles it and,
    with `against`, with the float matmul kernels of that commit's `kernels/matmul.py`."""
    import ckeir
    from ckeir.backends.llvm import kernels

    variants = {"": kernels.matmul}
    if against:
        from benchmarks.float_gemv import matmul_at

        variants[f"@{against}"] = matmul_at(against).matmul
    progs, own = {}, kernels.matmul
    try:
        for spec in specs:
            for tag, matmul in variants.items():
                log(f"decode_ops: compiling {spec}{tag}")
                kernels.matmul = matmul  # what kernels.weight_matmul calls for float weights
                stamps.ops.clear()  # entries of every spec have the same symbols
                prog = ckeir.compile(spec, threads=threads)
                progs[Path(spec).stem + tag] = (prog, dict(stamps.ops[decode_symbol(prog)]))
    finally:
        kernels.matmul = own
    return progs


def main(argv=None) -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("specs", nargs="+")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--against", help="also run each spec with this commit's float matmul kernels")
    args = p.parse_args(argv)
    os.environ["CKEIR_ADAPTIVE_THREADS"] = "0"
    from ckeir.runtime.generate import GenerationStats, generate_stream

    host = host_description()
    stamps = Stamps()
    stamps.install()
    hz = tsc_hz()
    compiled = compile_all(args.specs, args.against, args.threads, stamps)
    progs = {name: prog for name, (prog, _) in compiled.items()}
    prompts = {  # a random-weight model has no tokenizer: a few ids
        s: p.tokenizer.encode_prompt(PROMPT) if p.tokenizer else [1, 2, 3] for s, p in progs.items()
    }

    def one(name: str, tokens: int) -> GenerationStats:
        prog, stats = progs[name], GenerationStats()
        for _ in generate_stream(prog.engine, prompts[name], tokens + 1, prog.config.vocab, stats):
            pass
        return stats

    for name in progs:  # untimed: fault pages in, size buffers
        one(name, 3)
    stamped: dict[str, list[np.ndarray]] = {s: [] for s in progs}  # per round
    decode_s: dict[str, list[float]] = {s: [] for s in progs}
    for r in range(args.rounds):
        for name, prog in progs.items():
            time.sleep(IDLE_BETWEEN)
            sym = decode_symbol(prog)
            stamps.reset(prog.compiled, sym)
            stats = one(name, args.tokens)
            stamped[name].append(stamps.read(prog.compiled, sym).copy())
            decode_s[name].append(stats.decode_seconds / args.tokens)
        log(
            f"decode_ops round {r}: "
            + ", ".join(f"{s} {1 / d[-1]:.1f} tok/s" for s, d in decode_s.items())
        )
    results = {}
    for spec in progs:
        # the fastest round's stamps: the one other processes disturbed least
        best = int(np.argmin(decode_s[spec]))
        per_token = stamped[spec][best] / args.tokens / hz  # seconds, (threads, ops, 2)
        token_s = decode_s[spec][best]
        groups: dict[str, dict] = {}
        for i, kernel in sorted(compiled[spec][1].items()):
            g = groups.setdefault(label(kernel), {"calls": 0, "work": 0.0, "wait": 0.0, "bytes": 0})
            g["calls"] += 1
            g["bytes"] += weight_bytes(kernel) or 0
            g["work"] += float(per_token[0, i, 0])
            g["wait"] += float(per_token[0, i, 1])
            g["work_t1"] = g.get("work_t1", 0.0) + float(per_token[1, i, 0])
        inside = float(per_token[0].sum())
        results[spec] = {
            "tok_s_best": 1 / min(decode_s[spec]),
            "tok_s_median": 1 / float(np.median(decode_s[spec])),
            "seconds_per_token_best_round": token_s,
            "entry_seconds_per_token": inside,
            "outside_seconds_per_token": token_s - inside,
            "kernels": groups,
        }
        rows = [
            (
                name,
                g["calls"],
                f"{g['work'] * 1e3:.3f}",
                f"{g['work_t1'] * 1e3:.3f}",
                f"{g['wait'] * 1e3:.3f}",
                f"{(g['work'] + g['wait']) / token_s:.1%}",
                f"{g['bytes'] / (g['work'] + g['wait']) / 1e9:.1f}" if g["bytes"] else "",
            )
            for name, g in sorted(groups.items(), key=lambda kv: -(kv[1]["work"] + kv[1]["wait"]))
        ]
        rows.append(
            ("(outside the entry)", "", "", "", "", f"{(token_s - inside) / token_s:.1%}", "")
        )
        print_table(
            f"{spec}: {1e3 * token_s:.2f} ms a token in its fastest round "
            f"({1 / token_s:.1f} tok/s; median {results[spec]['tok_s_median']:.1f})",
            ["kernel", "calls", "work ms t0", "work ms t1", "wait ms t0", "share", "GB/s"],
            rows,
        )
    if args.against:
        print_table(
            f"decode tok/s, this tree against {args.against}'s float matmul kernels "
            f"({args.rounds} interleaved rounds of {args.tokens} tokens)",
            ["spec", "best", f"best @{args.against}", "ratio", "median ratio"],
            [
                [
                    Path(spec).stem,
                    f"{1 / min(decode_s[n]):.1f}",
                    f"{1 / min(decode_s[o]):.1f}",
                    f"{min(decode_s[o]) / min(decode_s[n]):.2f}×",
                    f"{np.median(decode_s[o]) / np.median(decode_s[n]):.2f}×",
                ]
                for spec in args.specs
                for n, o in [(Path(spec).stem, f"{Path(spec).stem}@{args.against}")]
            ],
        )
    print(host_line(host))
    if args.json:
        write_json(args.json, "decode_ops", results, host, tsc_hz=hz, args=vars(args))


if __name__ == "__main__":
    main()
