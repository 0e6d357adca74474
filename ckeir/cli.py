"""`ckec` — the command-line front door.

    ckec SPEC [--emit=mlir|llvm|asm] [--pass-pipeline=P] [--print-ir-after-all] ...
    ckec run SPEC --ids 1,2,3 [-n N] [--threads T] [--backend llvm|reference] [--[no-]pin]
        [--[no-]huge-pages] [--threads-fixed] [--temperature T --top-k K --top-p P --min-p P
        --seed S --repeat-penalty R --presence-penalty P --frequency-penalty F --stop TEXT]
    ckec opt FILE.mlir --pass-pipeline=P      (IR in, IR out: for pass tests)
    ckec serve SPEC [--host 127.0.0.1] [--port 8080] [--parallel N]   (OpenAI-compatible)

Errors are printed as `file:line:col: error: ...` with the line and a caret, never as a
Python traceback (set CKEIR_DEBUG=1 to see one), and the exit code is non-zero.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import stat
import sys
import traceback
from pathlib import Path

from ckeir import limits, outputs
from ckeir.errors import CkeError, SourceLoc

SUBCOMMANDS = ("run", "opt", "plan", "serve")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are CkeErrors: exit 1 like every user error (argparse's
    own exit 2 is ckec's code for an internal error)."""

    def error(self, message: str):
        raise CkeError(message, hint=self.format_usage().strip())


def _int_in(lo: int, hi: int):
    """An argparse type: an integer in [lo, hi] (a negative count or thread number is
    nonsense, a huge one would size work)."""

    def parse(text: str) -> int:
        digits = text.strip()
        if not re.fullmatch(r"[+-]?[0-9]+", digits, re.ASCII):
            raise argparse.ArgumentTypeError(f"expected an integer, not {text!r:.40}")
        # a number of many digits is out of range without converting it
        if len(digits.lstrip("+-").lstrip("0")) > len(str(hi)) or not lo <= int(digits) <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, not {text:.40}")
        return int(digits)

    return parse


def _real_in(lo: float, hi: float, what: str = "a number"):
    """An argparse type: a finite number (`what`) in [lo, hi]."""

    def parse(text: str) -> float:
        try:
            value = float(text) if len(text) <= 40 else math.nan
        except ValueError:
            value = math.nan
        if not limits.in_real_range(value, lo, hi):
            raise argparse.ArgumentTypeError(f"expected {what} in [{lo:g}, {hi:g}], not {text:.40}")
        return value

    return parse


def _seconds_in(lo: float, hi: float):
    """An argparse type: a finite number of seconds in [lo, hi]."""
    return _real_in(lo, hi, "seconds")


def _compile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="the .cke spec file")
    p.add_argument("--schedule", help="which schedule of the spec (default: the first)")
    p.add_argument("--pass-pipeline", help="comma-separated passes (default: the standard one)")
    p.add_argument(
        "--no-verify-each", action="store_true", help="do not run the verifier after every pass"
    )
    p.add_argument("--print-ir-after-all", action="store_true")
    p.add_argument(
        "--print-ir-after", action="append", default=[], metavar="PASS", help="PASS[,PASS...]"
    )
    p.add_argument("--dump-dir", help="write one numbered file per pass (.mlir, then .ll, .s)")
    p.add_argument("--timing", action="store_true", help="report time per pass and per stage")
    p.add_argument(
        "--isa",
        choices=["generic", "avx2", "avx512"],
        help="narrow the host's vector ISA (default: everything the CPU has)",
    )
    p.add_argument(
        "--threads",
        type=_int_in(1, limits.MAX_CORES),
        help="threads per rank (default: the node's cores)",
    )


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ckec", description="Compile a .cke spec to native code.")
    _compile_args(p)
    p.add_argument("--emit", choices=["mlir", "llvm", "asm"], default="mlir")
    p.add_argument("--phase", choices=["prefill", "decode"], help="only this phase's programs")
    p.add_argument(
        "--rank", type=_int_in(0, limits.MAX_NODES - 1), help="only this rank's programs"
    )
    p.add_argument("-o", "--output", help="write to this file instead of stdout ('-')")
    return p


def _run_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ckec run", description="Generate from a spec (greedy unless sampled).")
    _compile_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ids", help="prompt token ids, separated by commas and/or spaces")
    src.add_argument("--prompt", help="prompt text (needs a tokenizer in the model file)")
    p.add_argument("-n", "--max-new-tokens", type=_int_in(0, limits.MAX_NEW_TOKENS), default=16)
    _sampling_args(p)
    p.add_argument("--backend", choices=["llvm", "reference"], default="llvm")
    p.add_argument("--report", help="write the run report (JSON) to this file")
    p.add_argument(
        "--no-predict",
        dest="predict",
        action="store_false",
        help="--report without the prediction for this machine: the machine is not measured "
        "(the first report of a spec's shapes measures it for seconds); the report says so",
    )
    p.add_argument("--trace", help="write a Chrome/Perfetto trace (JSON) to this file")
    p.add_argument(
        "--simulate-links",
        action="store_true",
        help="delay each message between ranks as the spec's link would (latency + bytes/bw)",
    )
    p.add_argument(
        "--check-parity",
        action="store_true",
        help="also run the spec on one rank and compare tokens and logits (distributed runs)",
    )
    p.add_argument(
        "--measure-bandwidth",
        action="store_true",
        help="measure this machine's DRAM read bandwidth for the CKU fraction (remembered; "
        "otherwise the last measurement is used, or the spec's dram_bw)",
    )
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        help="run each pool thread on one CPU of its own, ranks on different CPUs (default: "
        "the schedule's `threads pinned|unpinned`, else ckeir's measured default)",
    )
    p.add_argument(
        "--huge-pages",
        action=argparse.BooleanOptionalAction,
        help="copy the model file's weights onto huge pages, and put arenas there (default: "
        "on where memory allows; CKEIR_HUGE_PAGES=0 turns it off too)",
    )
    p.add_argument(
        "--threads-fixed",
        action="store_true",
        help="run every token on all of a rank's threads (default: each token on as many as "
        "measured fastest, fewer when other work takes the CPUs; CKEIR_ADAPTIVE_THREADS=0 "
        "fixes them too)",
    )
    p.add_argument(
        "--transport",
        choices=["local", "mpi"],
        help="how ranks talk when the schedule spans nodes (default: local)",
    )
    p.add_argument(
        "--watchdog",
        type=_seconds_in(0, limits.MAX_WATCHDOG_S),
        metavar="SECONDS",
        help="local ranks: end the run when a rank is stopped (SIGSTOP, a debugger: none of "
        "its threads can run) for this long; a rank asleep or starved of a CPU is left alone "
        "(default: $CKEIR_WATCHDOG_SECONDS, else 30; 0 turns it off)",
    )
    return p


# ckec run's sampling flags: (flag, Sampling option, argparse type, help)
SAMPLING_FLAGS = (
    ("--temperature", "temperature", _real_in(0, 100), "0 (the default) is greedy"),
    ("--top-k", "top_k", _int_in(0, 1 << 24), "draw from the k likeliest ids (0: all)"),
    ("--top-p", "top_p", _real_in(0, 1), "draw from the likeliest ids holding this mass"),
    ("--min-p", "min_p", _real_in(0, 1), "drop ids less likely than this x the likeliest"),
    ("--seed", "seed", _int_in(0, (1 << 64) - 1), "the same seed draws the same ids"),
    ("--repeat-penalty", "repeat_penalty", _real_in(0, 100), "llama.cpp's (1: none)"),
    ("--repeat-last-n", "repeat_last_n", _int_in(-1, 1 << 24), "ids penalties see (-1: all)"),
    ("--presence-penalty", "presence_penalty", _real_in(-100, 100), "minus this once seen"),
    ("--frequency-penalty", "frequency_penalty", _real_in(-100, 100), "minus this per sight"),
)


def _sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (default: greedy)")
    for flag, dest, kind, text in SAMPLING_FLAGS:
        g.add_argument(flag, dest=dest, type=kind, help=text)
    g.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="end the text before TEXT (repeatable; with --prompt)",
    )


def _sampling(args) -> dict:
    """The sampling options the flags gave (checked again, and named, by the API)."""
    return {
        dest: getattr(args, dest)
        for _, dest, _, _ in SAMPLING_FLAGS
        if getattr(args, dest) is not None
    }


def _stream_options(args) -> dict:
    """`Program.stream`'s options from the flags: sampling, and the stop strings (every rank
    is given them: each ends the run at the id whose text reaches one)."""
    return _sampling(args) | ({"stop": args.stop} if args.stop else {})


def _opt_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ckec opt", description="Run passes over an IR file.")
    p.add_argument("input", help="IR in MLIR generic syntax ('-' for stdin)")
    p.add_argument("--pass-pipeline", required=True)
    p.add_argument("--no-verify-each", action="store_true")
    p.add_argument(
        "--cores", type=_int_in(1, limits.MAX_CORES), default=1, help="target cores (tile pass)"
    )
    p.add_argument("--l2", default="1MiB", help="target L2 per core (tile pass)")
    p.add_argument("--l3", default="32MiB", help="target L3 (tile pass)")
    p.add_argument("--spec", help="take the cluster and schedule (place pass) from this spec")
    p.add_argument("--weight-format", help="quantize pass: keep f32 q8_0 q4_0 q4_1")
    p.add_argument("--weight-except", action="append", default=[], help="quantize pass: skip")
    p.add_argument(
        "--emit",
        choices=["mlir", "llvm"],
        default="mlir",
        help="llvm: print the module lower-llvm produced (it must run last)",
    )
    return p


def _write_json(path: str, obj, flag: str) -> None:
    """A JSON report, written whole or not at all."""
    import json

    outputs.write_output(path, json.dumps(obj, indent=2, default=str), flag)


def _check_outputs(args, flags: dict[str, str]) -> None:
    """Refuse every output path that cannot be written before any work starts; `flags` maps
    an argparse destination to the flag a user typed."""
    for dest, flag in flags.items():
        path = getattr(args, dest, None)
        if path is not None and dest == "dump_dir":
            outputs.check_output_dir(path, flag)
        elif path is not None:
            outputs.check_output(path, flag)
            _not_the_spec(path, flag, args.spec)


def _not_the_spec(path: str, flag: str, spec: str) -> None:
    """`ckec spec.cke -o spec.cke` would replace the spec with its own IR."""
    try:
        same = path != outputs.STDOUT and os.path.samefile(path, spec)
    except (OSError, ValueError):  # one of them does not exist (yet)
        return
    if same:
        raise outputs.refusal(path, flag, "it is the input spec")


def _print_after(names: list[str]) -> frozenset[str]:
    """The passes of `--print-ir-after` (each may list several, comma-separated), refused
    when one is no pass at all: a typo would otherwise print nothing, silently."""
    import ckeir  # noqa: F401  (registers the passes)
    from ckeir.passes.manager import PASSES

    wanted = frozenset(n.strip() for arg in names for n in arg.split(","))
    for name in sorted(wanted):
        if name not in PASSES:
            raise CkeError(
                f"--print-ir-after: unknown pass '{name}'",
                hint="known passes: " + ", ".join(sorted(PASSES)),
            )
    return wanted


def _program(args, **extra):
    from ckeir.api import Program

    return Program(
        args.spec,
        pipeline=args.pass_pipeline,
        verify_each=not args.no_verify_each,
        print_after_all=args.print_ir_after_all,
        print_after=_print_after(args.print_ir_after),
        dump_dir=args.dump_dir,
        schedule=args.schedule,
        isa=args.isa,
        threads=args.threads,
        printer=lambda s: print(s, file=sys.stderr),
        **extra,
    )


def _timing(prog) -> None:
    print(prog.pass_manager.timing_report(), file=sys.stderr)
    for k, v in prog.timings.items():
        print(f"  {v:.4f}  {k}", file=sys.stderr)
    parts = {
        k: v for k, v in prog.timings.items() if not k.startswith("llvm-") or k == "llvm-total"
    }  # llvm-total has the parts
    print(f"  {sum(parts.values()):.4f}  total", file=sys.stderr)
    for k, hit in prog.cache_hits.items():
        print(f"  cache: {k} {'hit' if hit else 'miss (compiled now)'}", file=sys.stderr)


def cmd_compile(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    _check_outputs(args, {"output": "-o", "dump_dir": "--dump-dir"})
    selected = args.phase is not None or args.rank is not None
    backend = "reference" if args.emit == "mlir" or selected else "llvm"
    prog = _program(args, backend=backend)
    module = _select(prog.module, args.phase, args.rank) if selected else prog.module
    if args.emit == "mlir":
        from ckeir.ir.printer import print_ir

        text = print_ir(module)
    elif not selected:
        text = prog.llvm_ir() if args.emit == "llvm" else prog.asm()
    else:
        from ckeir.backends.llvm.jit import compile_ir
        from ckeir.backends.llvm.lower import lower_module

        lowered = lower_module(module, prog.host)
        text = lowered.text if args.emit == "llvm" else compile_ir(lowered.text, prog.host).asm()
    outputs.write_output(args.output or outputs.STDOUT, text, "-o")
    if args.timing:
        _timing(prog)
    return 0


def _select(module, phase, rank):
    """A module holding only the programs of `phase` and/or `rank`."""
    from ckeir.ir.core import module_op
    from ckeir.passes.manager import funcs

    keep = [
        f
        for f in funcs(module)
        if (phase is None or f.attr("phase") == phase)
        and (rank is None or f.attr("rank", 0) == rank)
    ]
    if not keep:
        raise CkeError(
            f"no program for phase {phase or 'any'} and rank {'any' if rank is None else rank}"
        )
    for f in keep:
        f.parent.ops.remove(f)
        f.parent = None
    return module_op(keep)


def cmd_run(argv: list[str]) -> int:
    args = _run_parser().parse_args(argv)
    ids = _parse_ids(args.ids) if args.ids is not None else None
    if args.prompt is not None:
        _check_utf8(args.prompt, "--prompt")
    _check_outputs(args, {"report": "--report", "trace": "--trace", "dump_dir": "--dump-dir"})
    _check_predict(args)
    _check_measured(args)
    _check_threads(args.threads)
    transport = _transport(args)
    try:
        return _run(args, ids, transport)
    finally:
        if transport is not None:
            transport.close()


def _check_predict(args) -> None:
    """--no-predict leaves the prediction out of a report: without --report there is none to
    leave it out of, and a flag that does nothing would be ignored silently."""
    if not args.predict and args.report is None:
        raise CkeError(
            "--no-predict: only the run report holds a prediction, and no --report was asked for",
            hint="give --report FILE.json, or leave --no-predict out",
        )


def _check_threads(threads: int | None) -> None:
    """At most one thread per CPU this process may run on: the threads of a rank meet at a
    barrier after every op, so a thread without a CPU stalls all of them (thousands of
    them never finish a token)."""
    from ckeir.backends.llvm.host import usable_cpus

    cpus = usable_cpus()
    if threads is not None and threads > cpus:
        raise CkeError(
            f"--threads {threads}: ckec may run on {cpus} CPUs here, and threads beyond that "
            "wait for each other at every op",
            hint="leave --threads out to use the node's cores, as many as this machine gives",
        )


def _given(args, flags: dict[str, str]) -> list[str]:
    """Which of `flags` (argparse destination → flag as typed) the user gave."""
    return [flag for dest, flag in flags.items() if getattr(args, dest)]


def _measurements(args) -> str | None:
    """The flags asking for measurements of the run, as the user typed them."""
    flags = {"report": "--report", "trace": "--trace", "measure_bandwidth": "--measure-bandwidth"}
    return " and ".join(_given(args, flags)) or None


def _check_measured(args, prog=None) -> None:
    """A report or trace measures decode steps, between generated tokens: refuse a run that
    could only leave it unwritten (or full of zeros), before it starts rather than silently
    after.  With `prog`, also what only the compiled spec tells: one rank on the reference
    backend has no native timings."""
    flags = _measurements(args)
    if flags is None:
        return
    if args.max_new_tokens < 2:
        raise CkeError(f"{flags}: decode is measured between generated tokens; give -n 2 or more")
    if prog is not None and prog.world_size == 1 and args.backend != "llvm":
        raise CkeError(f"{flags}: one rank is measured on native code; run with --backend llvm")


def _check_sampling(args, prog) -> None:
    """Sampling flags as the API checks them; --stop cuts text, so it needs --prompt."""
    try:
        prog.sampler(**_sampling(args))
    except CkeError as e:
        raise CkeError(f"sampling flags: {e.message}", hint=e.hint) from None
    if args.check_parity and args.seed is None and prog.sampler(**_sampling(args)):
        raise CkeError(
            "--check-parity compares the ranks' draws with one rank's: give --seed so both "
            "draw from the same random state"
        )
    if args.stop:
        from ckeir.runtime.tokenizer import check_stop

        check_stop(args.stop)
        if args.prompt is None:
            raise CkeError("--stop ends the text: give --prompt (with --ids there is no text)")


def _check_pin(args, prog) -> None:
    """--pin/--no-pin place a native thread pool: one rank on the reference backend has none,
    and a flag that does nothing would be ignored silently."""
    if args.pin is not None and prog.world_size == 1 and args.backend != "llvm":
        flag = "--pin" if args.pin else "--no-pin"
        raise CkeError(
            f"{flag}: the reference backend runs no thread pool to pin",
            hint="run with --backend llvm",
        )


def _check_world(args, prog, transport) -> None:
    """Under MPI, as many processes as the schedule has ranks (else a collective would name
    a rank that does not exist, deep in the run); flags about ranks need several."""
    asked = _given(args, {"simulate_links": "--simulate-links", "check_parity": "--check-parity"})
    if asked and prog.world_size == 1:
        raise CkeError(
            f"{' and '.join(asked)}: this schedule runs on one rank (no links, no twin to compare)"
        )
    if transport is not None and transport.size != prog.world_size:
        n = prog.world_size
        raise CkeError(
            f"this schedule runs on {n} ranks but MPI started {transport.size}",
            hint=f"run it as: mpiexec -n {n} {sys.executable} -m mpi4py -m ckeir.cli run …",
        )


def _parse_ids(text: str) -> list[int]:
    """`--ids`: token ids separated by commas and/or whitespace ("1,2,3", "1 2 3", "1, 2");
    each a plain decimal integer within limits.MAX_TOKEN_ID (the vocabulary is checked once
    the model is known)."""
    fields = re.split(r"\s*,\s*|\s+", text.strip())
    if fields == [""]:
        raise CkeError("--ids is empty: give at least one token id")
    ids = []
    for field in fields:
        if not re.fullmatch(r"[0-9]+", field, re.ASCII):
            shown = f"{field!r:.40}" if field else "an empty field"
            raise CkeError(
                f"--ids: {shown} is not a token id",
                hint="token ids are non-negative integers separated by commas or spaces",
            )
        if len(field) > 10 or int(field) > limits.MAX_TOKEN_ID:  # int() of 10 digits is cheap
            shown = field if len(field) <= 40 else f"of {len(field)} digits"
            raise CkeError(f"--ids: token id {shown} is too large (at most {limits.MAX_TOKEN_ID})")
        ids.append(int(field))
    return ids


def _check_utf8(text: str, flag: str) -> None:
    """Command-line text is decoded with surrogate escapes: an undecodable byte shows up as a
    lone surrogate, which no tokenizer can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        where = ""
        try:
            os.fsencode(text).decode("utf-8")
        except UnicodeDecodeError as e:
            where = f" (byte {e.object[e.start]:#04x} at offset {e.start})"
        except UnicodeEncodeError:
            pass
        raise CkeError(f"{flag} is not valid UTF-8 text{where}") from None


def _run(args, ids, transport) -> int:
    from ckeir.reports.progress import Progress

    with Progress() as progress:
        prog = _program(
            args,
            backend=args.backend,
            on_stage=progress.stage,
            transport=transport,
            launcher=True,
            huge_pages=args.huge_pages,
            # local ranks take the Program's choice with its other options
            adaptive_threads=False if args.threads_fixed else None,
        )
        with prog:
            # only a text prompt needs the model's tokenizer: --ids runs a model without one
            if args.prompt is not None:
                if prog.tokenizer is None:
                    raise CkeError(
                        "--prompt needs a tokenizer from the model file; this model "
                        "has none (give --ids)"
                    )
                ids = prog.tokenizer.encode_prompt(args.prompt)  # BOS where the file asks
            ids = _checked_request(args, prog, ids)  # before any rank starts
            _check_sampling(args, prog)
            _check_measured(args, prog)
            _check_pin(args, prog)
            _check_world(args, prog, transport)
            if prog.world_size > 1 and transport is None:
                return _run_local_ranks(args, prog, ids, progress)
            return _run_here(args, prog, ids, transport, progress)


def _run_here(args, prog, ids, transport, progress) -> int:
    """This process is the only rank, or one rank of an MPI world: generate, printing
    tokens as they come (rank 0 only); rank 0 gathers every rank's figures for the
    evidence."""
    from ckeir.ranks import run_rank, spec_links

    links = spec_links(prog) if args.simulate_links and transport is not None else None
    if links is not None:
        transport.link_model = links  # messages between MPI ranks delayed as the spec's links
    _ = prog.engine  # loads weights and starts the threads under the progress display
    progress.done()
    out = _TokenPrinter(args, prog, quiet=transport is not None and transport.rank != 0)
    figures = run_rank(
        prog,
        ids,
        args.max_new_tokens,
        transport,
        args.check_parity,
        out.push,
        pin=args.pin,
        sampling=_stream_options(args),
    )
    out.finish()
    gathered = transport.gather_object(figures) if transport is not None else [figures]
    if gathered is not None:  # rank 0
        where = f" | {transport.size} MPI ranks" if transport is not None else ""
        _evidence(args, prog, ids, gathered, links, where)
        if args.timing:
            _timing(prog)
    return 0


class _TokenPrinter:
    """Prints the generated tokens: the prompt then each piece of text as soon as its token
    exists (--prompt), or the ids separated by commas (--ids).  `quiet`: print nothing (a
    rank other than 0)."""

    def __init__(self, args, prog, quiet: bool):
        self.quiet = quiet
        self.tokens: list[int] = []
        self.text = None
        if args.prompt is not None and not quiet:
            from ckeir.runtime.tokenizer import TextStream

            self.text = TextStream(prog.tokenizer, args.stop or ())
            sys.stdout.write(args.prompt)
            sys.stdout.flush()

    def push(self, token: int) -> None:
        self.tokens.append(token)
        if self.text is not None:
            sys.stdout.write(self.text.push(token))
            sys.stdout.flush()

    def finish(self) -> None:
        if self.quiet:
            return
        if self.text is not None:
            sys.stdout.write(self.text.finish() + "\n")
        else:
            print(",".join(map(str, self.tokens)))


def _transport(args):
    """MPI when asked for (or when started by mpiexec), else None (local ranks if needed)."""
    from ckeir.runtime.transport.mpi import under_mpiexec

    if args.transport == "mpi" or (args.transport is None and under_mpiexec()):
        from ckeir.runtime.transport.mpi import MPITransport

        return MPITransport()
    return None


def _run_local_ranks(args, prog, ids, progress) -> int:
    from ckeir.ranks import run_local, spec_links

    progress.stage(f"starting {prog.world_size} local ranks")
    progress.done()
    links = spec_links(prog) if args.simulate_links else None
    result = run_local(
        prog,
        ids,
        args.max_new_tokens,
        links=links,
        collect_logits=args.check_parity,
        watchdog=args.watchdog,
        pin=args.pin,
        sampling=_stream_options(args),
    )
    tokens = result["tokens"]
    if args.prompt is not None:
        from ckeir.runtime.tokenizer import TextStream

        text = TextStream(prog.tokenizer, args.stop or ())
        print(args.prompt + "".join(map(text.push, tokens)) + text.finish())
    else:
        print(",".join(map(str, tokens)))
    _evidence(args, prog, ids, result["ranks"], links, f" | {prog.world_size} local ranks")
    return 0


def _evidence(args, prog, ids, figures: list[dict], links, where: str) -> None:
    """On rank 0, from every rank's figures (in rank order): the summary, the parity check,
    the run report and the trace — one path for one rank, local ranks and MPI ranks."""
    from ckeir.reports.run import against_bandwidth, fastest_rank_cku, run_report, summary_line
    from ckeir.runtime.bandwidth import read_bandwidth
    from ckeir.runtime.generate import GenerationStats

    stats = GenerationStats(**figures[0]["stats"])
    print(_summary(stats) + where, file=sys.stderr)
    parity = _parity(args, ids, figures) if args.check_parity else None
    if (prog.world_size == 1 and args.backend != "llvm") or stats.generated_tokens < 2:
        return  # nothing native to measure (refused earlier when a report was asked for)
    threads = figures[0]["threads"]
    bw = read_bandwidth(threads, measure=args.measure_bandwidth, host=prog.host)
    # the prediction may first measure this machine (seconds): only for a written report,
    # and not with --no-predict (the report then says it was not made)
    predict = args.report is not None and args.predict
    report = run_report(prog, figures, bw, links, parity, predict=predict)
    observed = fastest_rank_cku(report)
    if bw is not None and observed > bw:  # the figure was measured under load: again
        bw = read_bandwidth(threads, host=prog.host, observed=observed)
        node = prog.job.cluster.node(figures[0]["node"])
        report.update(against_bandwidth(report["cku_bytes_per_second"], bw, node))
    print(summary_line(report), file=sys.stderr)
    if args.report:
        _write_json(args.report, report, "--report")
    if args.trace:
        from ckeir.reports.trace import write_trace

        write_trace(
            args.trace,
            {f["rank"]: f["events"] for f in figures},
            prog.rank_nodes,
            "--trace",
            clocks={
                f["rank"]: (f["clock_offset_seconds"], f["clock_round_trip_seconds"])
                for f in figures
            },
            linux={f["rank"]: f.get("linux") for f in figures},
        )


def _parity(args, ids, figures: list[dict]) -> dict:
    """Tokens and logits of the distributed run (from whichever rank computed each step's)
    against the spec's single-rank twin, run here with the same options (a seeded draw
    draws the ranks' ids where the logits agree)."""
    from ckeir.api import Program
    from ckeir.reports.parity import compare, describe

    logits = {}
    for f in figures:
        logits.update(f["logits"])
    ref_logits = []
    with Program(args.spec, schedule=args.schedule, isa=args.isa, single_rank=True) as one:
        ref = list(
            one.stream(
                ids,
                args.max_new_tokens,
                on_logits=lambda i, x: ref_logits.append(x.copy()),
                **_stream_options(args),
            )
        )
    parity = compare(figures[0]["tokens"], logits, ref, ref_logits)
    print(describe(parity), file=sys.stderr)
    return parity


def _checked_request(args, prog, ids) -> list[int]:
    """The request as the API checks it, the refusal naming the flag it came from."""
    try:
        return prog.check_request(ids, args.max_new_tokens)
    except CkeError as e:
        source = "--ids" if args.ids is not None else "--prompt"
        if "context" in e.message:
            source += f" with -n {args.max_new_tokens}"
        raise CkeError(f"{source}: {e.message}", hint=e.hint) from None


def _summary(stats) -> str:
    rss = _peak_rss()
    libs = _library_rss()
    code = f" (shared-library code {libs / 2**20:.0f} MiB)" if libs is not None else ""
    return (
        f"prompt {stats.prompt_tokens} tokens, generated {stats.generated_tokens} | "
        f"prefill {stats.prefill_tps:.1f} tok/s | decode {stats.decode_tps:.1f} tok/s | "
        f"peak RSS {rss / 2**20:.0f} MiB{code}"
    )


def _peak_rss() -> int:
    """This process's peak resident bytes: VmHWM, which exec resets.  (getrusage's ru_maxrss
    keeps the parent's peak across fork + exec: ckec started by a 600 MiB process reported
    a 600 MiB run.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _library_rss() -> int | None:
    """Bytes of shared libraries (LLVM is 180 MB of them) resident in this process: file
    pages shared with every other process using them, and how many the kernel maps depends
    on what is already in its page cache.  None where /proc/self/smaps is missing."""
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return None
    total, in_lib = 0, False
    for line in text.splitlines():
        if line[:1] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            in_lib = ".so" in Path(path).name
        elif in_lib and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def cmd_plan(argv: list[str]) -> int:
    p = _Parser(prog="ckec plan", description="Show the planner's decisions.")
    p.add_argument("spec")
    p.add_argument("--schedule")
    p.add_argument("--json", help="also write the plan as JSON to this file")
    p.add_argument(
        "--for-this-machine",
        action="store_true",
        help="predict for this machine as `ckec run` would use it (its measured bandwidth, "
        "kernel rates and transport costs; measured once and remembered) instead of the "
        "declared cluster",
    )
    p.add_argument(
        "--simulate-links",
        action="store_true",
        help="with --for-this-machine: the ranks' messages take the spec's links, as "
        "`ckec run --simulate-links` makes them",
    )
    args = p.parse_args(argv)
    _check_outputs(args, {"json": "--json"})
    if args.simulate_links and not args.for_this_machine:
        raise CkeError("--simulate-links: only with --for-this-machine")
    from ckeir.api import Program
    from ckeir.reports.plan import plan_report, print_plan

    prog = Program(args.spec, backend="reference", schedule=args.schedule)
    machine = None
    if args.for_this_machine:
        from ckeir.ranks import spec_links
        from ckeir.runtime.machine import this_machine

        machine = this_machine(prog, spec_links(prog) if args.simulate_links else None)
    report = plan_report(prog, machine)
    print_plan(report)
    if args.json:
        _write_json(args.json, report, "--json")
    return 0


def cmd_serve(argv: list[str]) -> int:
    p = _Parser(
        prog="ckec serve",
        description="Serve a spec over HTTP with the OpenAI API (completions and chat "
        "completions, plain and streamed; /v1/models, /health, /metrics, /tokenize, "
        "/detokenize) on the continuous-batching scheduler.",
    )
    _compile_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_int_in(0, 65535), default=8080, help="default 8080")
    p.add_argument(
        "--parallel",
        type=_int_in(1, limits.MAX_BATCH),
        help="sequence slots decoded together (default: the schedule's batch); the "
        "schedule's own batch N runs one batched engine, another count one engine per slot",
    )
    p.add_argument("--backend", choices=["llvm", "reference"], default="llvm")
    p.add_argument(
        "--transport",
        choices=["local", "mpi"],
        help="how ranks talk when the schedule spans nodes (default: local; under mpiexec, "
        "mpi): rank 0 serves HTTP, the others run their stages",
    )
    args = p.parse_args(argv)
    _check_outputs(args, {"dump_dir": "--dump-dir"})
    _check_threads(args.threads)
    from ckeir.api import Program
    from ckeir.serve import main_log, serve
    from ckeir.serve.ranks import serve_local, serve_rank

    options = dict(
        backend=args.backend,
        pipeline=args.pass_pipeline,
        verify_each=not args.no_verify_each,
        dump_dir=args.dump_dir,
        schedule=args.schedule,
        isa=args.isa,
        threads=args.threads,
    )
    http = dict(host=args.host, port=args.port, parallel=args.parallel, log=main_log)
    # the spec and its plan (how many ranks) before the server starts: nothing compiled yet
    plan = Program(args.spec, **{**options, "backend": "reference"}, launcher=True)
    transport = _transport(args)
    if transport is not None:  # this process is one MPI rank
        with transport:
            serve_rank(transport, args.spec, options, http)
        return 0
    if plan.world_size > 1:
        from ckeir.serve.model import check_ranks_servable

        check_ranks_servable(plan, args.parallel)
        if args.backend != "llvm":
            raise CkeError("ckec serve on several ranks runs native code: --backend llvm")
        from ckeir.ranks import rank_options

        # each rank compiles natively, and the ranks share this machine's CPUs
        serve_local(args.spec, plan.world_size, rank_options(plan), http)
        return 0
    serve(
        args.spec,
        print_after_all=args.print_ir_after_all,
        print_after=_print_after(args.print_ir_after),
        printer=lambda s: print(s, file=sys.stderr),
        **http,
        **options,
    )
    return 0


def cmd_opt(argv: list[str]) -> int:
    args = _opt_parser().parse_args(argv)
    import ckeir  # noqa: F401  (registers dialects)
    from ckeir.ir import parse_ir, print_ir
    from ckeir.passes import PassContext, PassManager, Target, parse_pipeline

    text = _read_ir(args.input)
    module = parse_ir(text, args.input)
    target = Target(cores=args.cores, l2=_size(args.l2, "--l2"), l3=_size(args.l3, "--l3"))
    if "lower-llvm" in args.pass_pipeline:
        from ckeir.backends.llvm import lower  # noqa: F401  (registers lower-llvm)
    pm = PassManager(parse_pipeline(args.pass_pipeline), verify_each=not args.no_verify_each)
    options = {"weight_format": args.weight_format, "weight_except": args.weight_except}
    if args.spec:
        from ckeir.frontend import load_spec

        spec = load_spec(Path(args.spec))
        sched = spec.schedule()
        options.update(schedule=sched, cluster=spec.cluster_of(sched))
    ctx = PassContext(target=target, options=options)
    pm.run(module, ctx)
    if args.emit == "llvm":
        if "llvm" not in ctx.artifacts:
            raise CkeError("--emit=llvm needs lower-llvm at the end of the pipeline")
        sys.stdout.write(ctx.artifacts["llvm"].text)
    else:
        sys.stdout.write(print_ir(module))
    return 0


def _size(text: str, flag: str) -> int:
    from ckeir.units import parse_quantity

    try:
        return parse_quantity(text, "size")
    except CkeError as e:
        raise CkeError(f"{flag}: {e.message}") from None


def _read_ir(path: str) -> str:
    """The text `ckec opt` reads: a regular file or stdin ('-'), at most limits.MAX_IR_BYTES
    (a device such as /dev/zero would never end), UTF-8 (a bad byte is located)."""
    if path == "-":
        raw = sys.stdin.buffer.read(limits.MAX_IR_BYTES + 1)
    else:
        raw = _read_regular_file(path)
    if len(raw) > limits.MAX_IR_BYTES:  # a file that grew, or stdin
        raise _too_large("standard input" if path == "-" else path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        from ckeir.errors import IRParseError

        loc = SourceLoc.at_byte(path, raw, e.start)
        raise IRParseError(f"not UTF-8 text (byte {raw[e.start]:#04x})", loc=loc) from None


def _too_large(path: str) -> CkeError:
    return CkeError(f"cannot read {path}: larger than {limits.MAX_IR_BYTES} bytes of IR text")


def _read_regular_file(path: str) -> bytes:
    """At most limits.MAX_IR_BYTES + 1 bytes of a regular file; anything else is refused
    (opened non-blocking, so a FIFO with no writer cannot hang the check)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise CkeError(f"cannot read {path}: {outputs.describe_os_error(e)}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > limits.MAX_IR_BYTES:  # refused unread
        os.close(fd)
        if stat.S_ISREG(st.st_mode):
            raise _too_large(path)
        if stat.S_ISDIR(st.st_mode):
            raise CkeError(f"cannot read {path}: it is a directory")
        raise CkeError(
            f"cannot read {path}: it is not a regular file",
            hint=f"to read a stream, give it on standard input: ckec opt - < {path}",
        )
    with os.fdopen(fd, "rb") as f:
        try:
            return f.read(limits.MAX_IR_BYTES + 1)
        except OSError as e:
            raise CkeError(f"cannot read {path}: {outputs.describe_os_error(e)}") from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stdout, sys.stdout = sys.stdout, outputs.GuardedStdout(sys.stdout)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            commands = {"run": cmd_run, "opt": cmd_opt, "plan": cmd_plan, "serve": cmd_serve}
            code = commands[argv[0]](argv[1:])
        else:
            code = cmd_compile(argv)
        sys.stdout.flush()  # a full device fails here, while it can still be reported
        return code
    except BrokenPipeError:  # the reader of our output has gone (`ckec … | head -1`)
        outputs.discard_stdout(stdout)
        return 141  # what a shell shows for a tool ended by SIGPIPE
    except CkeError as e:
        if isinstance(e, outputs.OutputError):
            outputs.discard_stdout(stdout)
        print(e.format(), file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"error: {e.strerror}: {e.filename}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug in ckeir: say so plainly
        if os.environ.get("CKEIR_DEBUG"):
            traceback.print_exc()
        print(
            f"internal error: {type(e).__name__}: {e}\n"
            "note: this is a bug in ckeir; rerun with CKEIR_DEBUG=1 for a traceback",
            file=sys.stderr,
        )
        return 2
    finally:
        sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())
