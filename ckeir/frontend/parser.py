"""Text -> AST: the Lark grammar ``grammars/cke.lark`` and a short transformer.

``parse(text, filename)`` returns a ``Spec`` of declarations *as written*: keys left out
are ``None``, nothing is defaulted, resolved or cross-checked (that is ``semantic``).
Lark's own exceptions never escape: a syntax error becomes a ``SpecError`` that points at
the offending spot and says in words what could have stood there.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path

import attrs
import lark
from lark import Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError
from lark.lexer import PatternStr

from ckeir import limits, units
from ckeir.errors import CkeError, SourceLoc, SpecError
from ckeir.frontend.ast import (
    ClusterDecl,
    ImportDecl,
    LinkDecl,
    ModelDecl,
    NodeDecl,
    PhaseDecl,
    ScheduleDecl,
    Spec,
    StageDecl,
    WeightsDecl,
)

GRAMMAR = Path(__file__).resolve().parent.parent / "grammars" / "cke.lark"


def parse(text: str, filename: str = "<string>") -> Spec:
    """Parse one file's text into its declarations, as written."""
    if len(text) > limits.MAX_SPEC_BYTES:
        raise SpecError(
            f"spec {filename} is larger than {units.format_bytes(limits.MAX_SPEC_BYTES)}; "
            "split it with `import`"
        )
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(err, text, filename) from None
    try:
        return _ToAst(filename, text).transform(tree)
    except VisitError as err:
        if isinstance(err.orig_exc, CkeError):
            raise err.orig_exc from None
        raise


class _EveryWordIsAName:
    """Post-lexer that makes NAME acceptable everywhere to the contextual lexer, so that a
    misspelt keyword lexes as one wrong word (``dramx``) instead of a keyword plus junk
    (``dram`` ``x``), and ``cores2`` is not silently read as ``cores 2``."""

    always_accept = ("NAME",)

    def process(self, stream):
        return stream


@functools.cache
def _lark() -> lark.Lark:
    return lark.Lark(
        GRAMMAR.read_text(),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=True,
        postlex=_EveryWordIsAName(),
    )


# ---- the transformer ------------------------------------------------------------------


@attrs.frozen
class _Setting:
    """One `key value` statement inside a block, before it becomes a field of a decl."""

    key: str
    value: object
    loc: SourceLoc


@v_args(inline=True, meta=True)
class _ToAst(Transformer):
    def __init__(self, filename: str, text: str):
        super().__init__()
        self.file = filename
        self.lines = text.split("\n")  # as Lark counts lines

    def at(self, where) -> SourceLoc:
        """The location of a token or of a tree's first token."""
        line = where.line
        return SourceLoc(self.file, line, where.column, self.lines[line - 1])

    # values
    def integer(self, meta, number):
        units.check_digits(number, self.at(number))
        if not number.isdigit():
            raise SpecError(f"expected a whole number, got {number}", loc=self.at(number))
        return int(number)

    def real(self, meta, number):
        units.check_digits(number, self.at(number))
        return float(number)  # 1e400 becomes inf: the range checks of `semantic` refuse it

    def size(self, meta, number, unit):
        return units.to_bytes(number, unit, self.at(unit), number_loc=self.at(number))

    def rate(self, meta, number, unit):
        return units.to_bytes_per_second(number, unit, self.at(unit), number_loc=self.at(number))

    def time(self, meta, number, unit):
        return units.to_seconds(number, unit, self.at(unit), number_loc=self.at(number))

    def boolean(self, meta, word):
        return word == "true"

    def _word(self, meta, word):
        return str(word)

    def thread_placement(self, meta, word):
        return word == "pinned"

    rope_pairing = weights_format = weight_format = transfer_format = phase_name = _word

    def names(self, meta, *names):
        return names  # tokens, so that a name can be located later

    def __default__(self, data, children, meta):
        """Every `key value` statement: `vocab 512`, `dram 24GiB`, `like n0`, ..."""
        (value,) = children
        return _Setting(data, str(value) if isinstance(value, Token) else value, self.at(meta))

    # model
    def random_weights(self, meta, seed=0):
        return WeightsDecl("random", seed=seed, loc=self.at(meta))

    def file_weights(self, meta, kind, path):
        return WeightsDecl(kind, path=self.path(path), loc=self.at(meta))

    def package_weights(self, meta, kind, package, file):
        path, package = self.path(file), self.path(package)
        return WeightsDecl(kind, path=path, package=package, loc=self.at(meta))

    def model(self, meta, name, *settings):
        block = self._block(settings, f"model {name}")
        if "head_dim" in block:  # `head_dim` is the width in effect (ModelDecl.head_dim)
            block["stated_head_dim"] = block.pop("head_dim")
        return ModelDecl(name=str(name), **block, loc=self.at(name))

    # cluster
    def node(self, meta, name, *settings):
        return NodeDecl(name=str(name), **self._block(settings, f"node {name}"), loc=self.at(name))

    def link(self, meta, a, b, *settings):
        block = self._block(settings, f"link {a} <-> {b}")
        return LinkDecl(a=str(a), b=str(b), **block, loc=self.at(meta))

    def cluster(self, meta, name, *items):
        nodes = tuple(i for i in items if isinstance(i, NodeDecl))
        links = tuple(i for i in items if isinstance(i, LinkDecl))
        return ClusterDecl(str(name), nodes, links, loc=self.at(name))

    # schedule
    def run(self, meta, model, cluster):
        return _Setting("run", (model, cluster), self.at(meta))

    def quantize_weights(self, meta, fmt, names):
        names = names or ()
        locs = {f"except {n}": self.at(n) for n in names}  # where each name was written
        return _Setting("quantize weights", (fmt, tuple(map(str, names)), locs), self.at(meta))

    def quantize_transfers(self, meta, fmt):
        return _Setting("quantize transfers", fmt, self.at(meta))

    def quantize_activations(self, meta, fmt):
        return _Setting("quantize activations", fmt, self.at(meta))

    def auto(self, meta):
        return _Setting("auto", True, self.at(meta))

    def stage(self, meta, nodes, first, last=None):
        nodes = tuple(map(str, nodes))
        return StageDecl(nodes, first, first if last is None else last, loc=self.at(meta))

    def phase(self, meta, name, *items):
        stages = tuple(i for i in items if isinstance(i, StageDecl))
        auto = "auto" in self._block([i for i in items if isinstance(i, _Setting)], f"phase {name}")
        phase = PhaseDecl(name, stages, auto=auto, loc=self.at(meta))
        return _Setting(f"phase {name}", phase, phase.loc)

    def schedule(self, meta, name, *settings):
        block = self._block(settings, f"schedule {name}")
        model, cluster = block.pop("run", (None, None))
        weight_format, weight_except, except_locs = block.pop("quantize weights", (None, (), {}))
        key_locs = block.pop("key_locs")
        if model is not None:
            key_locs |= {"model": self.at(model), "cluster": self.at(cluster)}
        key_locs |= except_locs
        return ScheduleDecl(
            name=str(name),
            model=model and str(model),
            cluster=cluster and str(cluster),
            weight_format=weight_format,
            weight_except=weight_except,
            transfer_format=block.pop("quantize transfers", None),
            activation_format=block.pop("quantize activations", None),
            phases={p.name: p for k, p in block.items() if k.startswith("phase ")},
            batch=block.pop("batch", None),
            pin=block.pop("threads", None),
            loc=self.at(name),
            key_locs=key_locs,
        )

    # the file
    def import_file(self, meta, path):
        return ImportDecl(self.path(path), loc=self.at(meta))

    def path(self, token: Token) -> str:
        """A quoted file or package name; a NUL cannot be part of any path."""
        text = _unquote(token)
        if "\0" in text:
            raise SpecError("a path cannot contain a NUL character", loc=self.at(token))
        return text

    def start(self, meta, *decls):
        return Spec.from_declarations(self.file, decls)

    def _block(self, settings, where: str) -> dict:
        """The settings of one block as keyword arguments, plus `key_locs`; a key given
        twice is an error at its second occurrence."""
        values: dict = {}
        key_locs: dict[str, SourceLoc] = {}
        for s in settings:
            if s.key in values:
                raise SpecError(
                    f"'{s.key}' is given twice in {where}",
                    loc=s.loc,
                    hint=f"the first is at line {key_locs[s.key].line}",
                )
            values[s.key] = s.value
            key_locs[s.key] = s.loc
        return values | {"key_locs": key_locs}


def _unquote(token: str) -> str:
    body = token[1:-1]
    out, i = [], 0
    while i < len(body):  # `\x` stands for x: enough for \" and \\ in paths
        if body[i] == "\\":
            i += 1
        out.append(body[i])
        i += 1
    return "".join(out)


# ---- syntax errors in words -----------------------------------------------------------

# What a terminal is, for "expected ..." messages; literal keywords and punctuation are quoted.
_TERMINAL_WORDS = {
    "NAME": ["a name"],
    "NUMBER": ["a number"],
    "UNIT": ["a unit such as GiB, GB/s or us"],
    "STRING": ['a quoted string such as "file.gguf"'],
    "_SEP": ["a newline", "';'"],
    "$END": ["end of file"],
}
_CLOSERS = ("}", "]", ")")


def _syntax_error(err: UnexpectedInput, text: str, filename: str) -> SpecError:
    expected = _expected_terminals(err)
    if isinstance(err, UnexpectedToken) and err.token.type != "$END":
        found, line, col = _describe_token(err.token), err.token.line, err.token.column
    elif isinstance(err, UnexpectedCharacters):
        found, line, col = _describe_char(text[err.pos_in_stream]), err.line, err.column
    else:
        found, (line, col) = "end of file", _end_of(text)
    loc = SourceLoc(filename, line, col, text.split("\n")[line - 1])
    words = _expected_words(expected)
    hint = None
    if isinstance(err, UnexpectedToken) and err.token.type not in ("$END", "_SEP"):
        keywords = [w.strip("'") for w in words if w.startswith("'")]
        close = difflib.get_close_matches(str(err.token), keywords, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else None
    if found == "character '\"'":
        hint = "a string ends on the line it starts"
    return SpecError(f"unexpected {found}; expected {_either(words)}", loc=loc, hint=hint)


def _expected_terminals(err: UnexpectedInput) -> set[str]:
    """What the parser could have taken at the error.  Asking the parser itself is exact;
    the LALR table row over-approximates after a reduction, and the lexer's list always
    includes NAME (see _EveryWordIsAName)."""
    interactive = getattr(err, "interactive_parser", None)
    if interactive is not None:
        return set(interactive.accepts())
    return set(getattr(err, "expected", None) or getattr(err, "allowed", None) or ())


def _expected_words(terminals: set[str]) -> list[str]:
    literal = {
        t.name: t.pattern.value for t in _lark().terminals if isinstance(t.pattern, PatternStr)
    }
    order = {t.name: i for i, t in enumerate(_lark().terminals)}
    keywords = sorted((t for t in terminals if t in literal), key=order.get)
    words = [f"'{literal[t]}'" for t in keywords if literal[t] not in _CLOSERS]
    for t in ("NAME", "NUMBER", "UNIT", "STRING", "_SEP"):
        words += _TERMINAL_WORDS[t] if t in terminals else []
    words += [f"'{literal[t]}'" for t in keywords if literal[t] in _CLOSERS]
    return words + (_TERMINAL_WORDS["$END"] if "$END" in terminals else [])


def _either(words: list[str]) -> str:
    if not words:
        return "nothing more"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _describe_token(token: Token) -> str:
    if token.type == "_SEP":
        return "';'" if token.startswith(";") else "end of line"
    if token.type == "STRING":
        return f"string {_shorten(token)}"
    return f"'{_shorten(token)}'"


def _shorten(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _describe_char(c: str) -> str:
    return f"character '{c}'" if c.isprintable() else f"character U+{ord(c):04X}"


def _end_of(text: str) -> tuple[int, int]:
    """Line and column just after the last non-blank character."""
    body = text.rstrip()
    line = body.count("\n") + 1
    return line, len(body) - (body.rfind("\n") + 1) + 1
