"""How far ckeir's greedy ids agree with llama.cpp's on the same file, and why they part.

Both engines run the same prompt ids; after each step both are fed llama.cpp's id (teacher
forcing), so every step compares the two engines' logits on the same context, also past the
first step where their argmaxes differ.  Per step: each engine's argmax, llama.cpp's margin of
its own pick over ckeir's (the gap ckeir's logits had to cross: 0 where they agree), llama.cpp's
top-2 gap, and the two engines' logits against each other over the whole vocabulary (max and
RMS of the difference, with the mean offset taken out, and the correlation).  A step where the
ids differ is a near-tie when llama.cpp's margin is within the engines' usual difference on
the tokens that compete (`TIE_RMS` times the RMS difference over llama.cpp's top 64 but the two
ids at stake): the two computations differ in rounding (activation blocks, summation order),
not in the model.

`python -m benchmarks.agree` prints, for one spec and its GGUF file, the prompt as ckeir and as
llama.cpp tokenize it, each step's record, and both top-5 lists at the first step that differs;
`benchmarks.types` and `benchmarks.gemma3` put `summary` in their ids column.

    python -m benchmarks.agree [--spec specs/gemma3-270m.cke] [--prompt "Once upon a time"]
                               [--steps 16] [--threads 2] [--activations f32] [--reference]
                               [--json FILE]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import attrs
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO, common_args, log, write_json

TOP = 64  # llama.cpp's best tokens: where a difference between the engines can flip an id
TIE_RMS = 3.0  # a margin within this many RMS differences (over TOP) is a near-tie


@attrs.frozen
class Step:
    """One step's comparison of ckeir's logits (`ours`) with llama.cpp's (`ref`)."""

    ours: int  # ckeir's argmax
    ref: int  # llama.cpp's argmax (the id both engines are fed next)
    margin: float  # ref[ref] - ref[ours]: how much llama.cpp prefers its id over ckeir's
    ref_gap: float  # llama.cpp's best logit minus its second best
    max_diff: float  # max |ours - ref - mean offset| over the vocabulary
    rms_diff: float  # RMS of the same
    rms_top: float  # RMS of the same over llama.cpp's TOP best tokens but the two argmaxes
    corr: float  # Pearson correlation of the two logit vectors
    top_ours: tuple[tuple[int, float], ...]  # ckeir's 5 best (id, logit)
    top_ref: tuple[tuple[int, float], ...]  # llama.cpp's 5 best (id, logit)
    # a third engine's (float64 reference) logit of ckeir's id minus that of llama.cpp's:
    # > 0 where it sides with ckeir (None: no arbiter ran)
    arbiter: float | None = None

    @property
    def same(self) -> bool:
        return self.ours == self.ref

    @property
    def tie(self) -> bool:
        return not self.same and self.margin <= TIE_RMS * self.rms_top


def top(logits: np.ndarray, n: int = 5) -> tuple[tuple[int, float], ...]:
    best = np.argpartition(logits, -n)[-n:]
    best = best[np.argsort(-logits[best], kind="stable")]
    return tuple((int(i), float(logits[i])) for i in best)


def compare(ours: np.ndarray, ref: np.ndarray, arbiter: np.ndarray | None = None) -> Step:
    ours = np.asarray(ours, np.float64).reshape(-1)
    ref = np.asarray(ref, np.float64).reshape(-1)
    a, b = int(np.argmax(ours)), int(np.argmax(ref))
    diff = ours - ref
    diff -= diff.mean()
    # the usual difference where it could flip an id: llama.cpp's best tokens, the two
    # contested ids left out (their own difference is what is judged against it)
    best = np.argpartition(ref, -TOP)[-TOP:]
    best = best[(best != a) & (best != b)]
    two = np.sort(ref[np.argpartition(ref, -2)[-2:]])
    return Step(
        ours=a,
        ref=b,
        margin=float(ref[b] - ref[a]),
        ref_gap=float(two[1] - two[0]),
        max_diff=float(np.abs(diff).max()),
        rms_diff=float(np.sqrt((diff * diff).mean())),
        rms_top=float(np.sqrt((diff[best] ** 2).mean())),
        corr=float(np.corrcoef(ours, ref)[0, 1]),
        top_ours=top(ours),
        top_ref=top(ref),
        arbiter=None if arbiter is None else float(arbiter.reshape(-1)[a] - arbiter.reshape(-1)[b]),
    )


def forced(engines: list, prompt: list[int], steps: int) -> list[list[np.ndarray]]:
    """Each engine's logits at `steps` steps after `prompt`: the prompt's last row, then one
    decode step per id, every engine fed the last engine's argmax (llama.cpp's)."""
    logits = [[] for _ in engines]
    for e in engines:
        e.reset()
    rows = []
    for e in engines:
        pos, row = 0, None
        for start in range(0, len(prompt), e.max_prefill):
            chunk = np.asarray(prompt[start : start + e.max_prefill], np.int32)
            _, row = e.prefill(chunk, pos)
            pos += len(chunk)
        rows.append(row)
    pos = len(prompt)
    for step in range(steps):
        for i, row in enumerate(rows):
            logits[i].append(np.array(row, np.float64).reshape(-1))
        if step == steps - 1:
            break
        token = int(np.argmax(logits[-1][-1]))
        rows = [e.decode(token, pos)[1] for e in engines]
        pos += 1
    return logits


def agreement(ours, ref, prompt: list[int], steps: int, arbiter=None) -> list[Step]:
    """The two engines compared step by step on llama.cpp's greedy path; with an `arbiter`
    engine (the float64 reference backend), which of the two ids it prefers where they differ."""
    if arbiter is None:
        a, b = forced([ours, ref], prompt, steps)
        return [compare(x, y) for x, y in zip(a, b, strict=True)]
    a, c, b = forced([ours, arbiter, ref], prompt, steps)
    return [compare(x, y, z) for x, y, z in zip(a, b, c, strict=True)]


def prefix(steps: list[Step]) -> int:
    """How many greedy ids agree before the first that differs (free-running ids are the
    forced ones up to there)."""
    return next((i for i, s in enumerate(steps) if not s.same), len(steps))


def summary(steps: list[Step], names=("ckeir", "llama.cpp")) -> str:
    """The ids column: `16/16`, or the agreeing prefix, what the first difference is (with
    an arbiter, whose id it prefers, by how much), and how many of the forced steps agree,
    e.g. `4/16 (tie: gap 0.26, Δ 0.23; forced 15/16)`."""
    n, k = len(steps), prefix(steps)
    if k == n:
        return f"{n}/{n}"
    s = steps[k]
    what = "tie" if s.tie else "DIFFERS"
    same = sum(x.same for x in steps)
    untied = sum(not x.same and not x.tie for x in steps)
    side = ""
    if s.arbiter is not None:
        side = f"; float64 sides with {names[s.arbiter < 0]} by {abs(s.arbiter):.2g}"
    forced_ = f"forced {same}/{n}" + (f", {untied} beyond a tie" if untied else "")
    return f"{k}/{n} ({what}: gap {s.margin:.2g}, Δ {s.rms_top:.2g}{side}; {forced_})"


def as_dict(steps: list[Step]) -> list[dict]:
    return [attrs.asdict(s) | {"tie": s.tie} for s in steps]


# ---- the command ------------------------------------------------------------------------------


def llama_tokens(llama, text: str) -> list[int]:
    """llama.cpp's tokenization of a prompt (BOS where the file asks for it)."""
    return [int(t) for t in llama.llm.tokenize(text.encode(), add_bos=True, special=False)]


def weights_path(program) -> Path:
    return Path(program.job.model_file.path)


def float_spec(spec: Path, directory: Path) -> Path:
    """`spec` with float activations (`quantize activations f32`): no 8-bit blocks."""
    text = spec.read_text()
    line = next(x for x in text.splitlines() if x.strip().startswith("quantize weights"))
    out = directory / spec.name
    out.write_text(text.replace(line, f"{line}\n  quantize activations f32"))
    return out


def show(steps: list[Step], tokenizer, ours: str, ref: str) -> None:
    def piece(i: int) -> str:
        return repr(tokenizer.decode([i])) if tokenizer is not None else ""

    print(f"\n{ours} vs {ref}: step, argmax of each, {ref}'s margin of its id over {ours}'s")
    print(f"  and its top-2 gap; {ours} - {ref} (mean offset out): max|Δ|, RMS, RMS over {TOP}")
    print(f"  step {ours:>9s} {ref:>9s}  margin  top-2 gap  max|Δ|  rmsΔ  rmsΔ(top)  corr")
    for i, s in enumerate(steps):
        mark = "" if s.same else (" tie" if s.tie else " DIFFERS")
        print(
            f"  {i:4d} {s.ours:9d} {s.ref:9d} {s.margin:7.4f} {s.ref_gap:10.4f} "
            f"{s.max_diff:7.3f} {s.rms_diff:6.3f} {s.rms_top:9.4f} {s.corr:.6f}{mark}"
        )
    k = prefix(steps)
    if k < len(steps):
        s = steps[k]
        print(f"  first difference at step {k}:")
        for name, best in ((ours, s.top_ours), (ref, s.top_ref)):
            print(f"    {name:9s} " + "  ".join(f"{i} {piece(i)} {v:.4f}" for i, v in best))
    print(f"  {ours} vs {ref}: {summary(steps, (ours, ref))}")


def main(argv=None) -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--spec", type=Path, default=REPO / "specs" / "gemma3-270m.cke")
    p.add_argument("--prompt", default="Once upon a time")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--activations",
        choices=("q8_0", "f32"),
        default="q8_0",
        help="ckeir's matmul activations (f32: no 8-bit blocks; slower)",
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="also compare both with ckeir's numpy reference backend, float64 on the "
        "dequantized weights with float activations (slow: seconds a step)",
    )
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ckeir-agree-") as tmp:
        run(a, float_spec(a.spec, Path(tmp)))


def run(a, floats: Path) -> None:
    import ckeir
    from benchmarks.e2e import LlamaCppEngine

    program = ckeir.compile(floats if a.activations == "f32" else a.spec, threads=a.threads)
    path = weights_path(program)
    tk = program.tokenizer
    prompt = tk.encode_prompt(a.prompt)
    llama = LlamaCppEngine(path, a.threads, n_ctx=len(prompt) + a.steps + 8)
    theirs = llama_tokens(llama, a.prompt)
    print(f"file {path}")
    print(f"prompt {a.prompt!r}: ckeir {prompt}, llama.cpp {theirs}")
    if prompt != theirs:
        print("  THE PROMPTS DIFFER: both engines run ckeir's ids below")
    engines = [program.engine, llama]
    names = ["ckeir", "llama.cpp"]
    ref = None
    if a.reference:
        log("agree: compiling the reference backend")
        ref = ckeir.compile(floats, backend="reference")
        engines.insert(0, ref.engine)
        names.insert(0, "reference")
    try:
        logits = forced(engines, prompt, a.steps)
    finally:
        program.close()
        llama.close()
        if ref is not None:
            ref.close()
    results = {"prompt": prompt, "llama_prompt": theirs}
    pairs = [(0, len(engines) - 1)]
    if a.reference:  # each of ckeir and llama.cpp against the float64 reference
        pairs = [(1, 2), (1, 0), (2, 0)]
    for i, j in pairs:
        # ckeir vs llama.cpp with the reference as the arbiter of the ids they part on
        third = logits[0] if (i, j) == (1, 2) else [None] * a.steps
        steps = [compare(*x) for x in zip(logits[i], logits[j], third, strict=True)]
        show(steps, tk, names[i], names[j])
        label = f"{names[i]} vs {names[j]}"
        results[label] = {"summary": summary(steps, names[i :: j - i]), "steps": as_dict(steps)}
    if a.json:
        write_json(a.json, "agree", results, spec=str(a.spec), text=a.prompt)


if __name__ == "__main__":
    main()
