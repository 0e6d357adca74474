"""Parse MLIR's generic operation syntax back into IR (the inverse of `printer`).

A character-level recursive-descent parser: types and attributes are lexed in context, which
keeps `tensor<4x576xf32>` and `array<i64: 1, 2>` simple.  Knows nothing of particular ops.
Errors are `IRParseError`s located at `file:line:col`.
"""

from __future__ import annotations

import bisect
import re
from contextlib import contextmanager

from ckeir.errors import IRParseError, SourceLoc
from ckeir.ir import attributes as A
from ckeir.ir import types as T
from ckeir.ir.core import Block, Operation, Region, Value
from ckeir.limits import MAX_BYTES, MAX_IR_DEPTH

MAX_INT_WIDTH = 1024  # bits of an integer type (MLIR allows more; nothing here needs them)

_WS = re.compile(r"(\s|//[^\n]*)*")
_VALUE = re.compile(r"%([A-Za-z0-9_$.\-]+)(?::(\d+))?")
_USE = re.compile(r"%([A-Za-z0-9_$.\-]+)(?:#(\d+))?")
_BLOCK = re.compile(r"\^([A-Za-z0-9_$.\-]+)")
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_$.]*")
_INT = re.compile(r"-?\d+(?![.\deE])")
_FLOAT = re.compile(r"-?(\d+\.\d*([eE][-+]?\d+)?|\d+[eE][-+]?\d+)")
_HEX = re.compile(r"0x[0-9A-Fa-f]+")
_STRING = re.compile(r'"((?:[^"\\\n]|\\[nt"\\]|\\[0-9A-Fa-f]{2})*)"')
_DIM = re.compile(r"(\?|\d+)x")


class _Placeholder(Value):
    __slots__ = ("name", "pos")

    def __init__(self, name: str, pos: int):
        super().__init__(T.i64)
        self.name, self.pos = name, pos


class Parser:
    def __init__(self, text: str, filename: str = "<ir>"):
        self.text, self.file, self.pos = text, filename, 0
        self.depth = 0
        self.line_starts: list[int] | None = None
        self.scopes: list[dict[str, Value]] = [{}]
        self.forward: list[dict[str, _Placeholder]] = [{}]

    # -- low-level scanning -----------------------------------------------------------------
    def error(self, message: str, pos: int | None = None) -> IRParseError:
        return IRParseError(message, self.loc(self.pos if pos is None else pos))

    def loc(self, pos: int) -> SourceLoc:
        """file:line:col of `pos` (every op records one: found by bisection over the line
        starts, so that parsing stays linear in the text)."""
        if self.line_starts is None:
            self.line_starts = [0, *(m.end() for m in re.finditer("\n", self.text))]
        line = bisect.bisect_right(self.line_starts, pos)
        start = self.line_starts[line - 1]
        end = self.text.find("\n", start)
        return SourceLoc(self.file, line, pos - start + 1, _clip(self.text, start, end))

    def ws(self) -> None:
        self.pos = _WS.match(self.text, self.pos).end()

    def here(self) -> int:
        """The position of the next token (for error locations)."""
        self.ws()
        return self.pos

    def peek(self, s: str) -> bool:
        self.ws()
        return self.text.startswith(s, self.pos)

    def accept(self, s: str) -> bool:
        if self.peek(s):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: str, what: str | None = None) -> None:
        if not self.accept(s):
            found = self.text[self.pos : self.pos + 12].split("\n")[0] or "end of input"
            raise self.error(f"expected {what or repr(s)}, found {found!r}")

    def match(self, rx: re.Pattern) -> re.Match | None:
        self.ws()
        m = rx.match(self.text, self.pos)
        if m:
            self.pos = m.end()
        return m

    @contextmanager
    def nested(self, what: str):
        """One level of nesting (a region, an attribute or type inside another): bounded, so
        that hostile text ends in an error naming where, not in Python's recursion limit."""
        if self.depth >= MAX_IR_DEPTH:
            raise self.error(f"{what} nested more than {MAX_IR_DEPTH} levels deep")
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def string(self) -> str:
        m = self.match(_STRING)
        if not m:
            raise self.error("expected a string literal")
        return _unescape(m.group(1))

    # -- operations -------------------------------------------------------------------------
    def parse_top(self) -> Operation:
        ops = []
        while True:
            self.ws()
            if self.pos >= len(self.text):
                break
            ops.append(self.operation())
        self.close_scope()
        if len(ops) == 1 and ops[0].name == "builtin.module":
            return ops[0]
        from ckeir.ir.core import module_op

        return module_op(ops)

    def operation(self) -> Operation:
        start = self.pos
        results: list[tuple[str, int, int]] = []
        if self.peek("%"):
            while True:
                at = self.here()
                m = self.match(_VALUE)
                if not m:
                    raise self.error("expected a result name such as %0")
                results.append((m.group(1), int(m.group(2) or 1), at))
                if not self.accept(","):
                    break
            self.expect("=")
        self.ws()
        op_pos = self.pos
        if not self.peek('"'):
            raise self.error('expected an operation name in quotes, e.g. "cke.add"')
        name = self.string()
        self.expect("(")
        uses = []
        if not self.peek(")"):
            while True:
                uses.append(self.use())
                if not self.accept(","):
                    break
        self.expect(")")
        props = {}
        if self.accept("<{"):
            props = self.dict_entries("}>")
        regions = []
        if self.peek("(") and not self.peek("()"):
            self.expect("(")
            while True:
                with self.nested("regions"):
                    regions.append(self.region())
                if not self.accept(","):
                    break
            self.expect(")")
        attributes = {}
        if self.accept("{"):
            attributes = self.dict_entries("}")
        self.expect(":", "':' and the op's function type")
        type_pos = self.here()
        ftype = self.type()
        if not isinstance(ftype, T.FunctionType):
            raise self.error("expected a function type `(operands) -> results`", type_pos)
        if len(ftype.inputs) != len(uses):
            raise self.error(
                f"{name}: {len(uses)} operands but the type lists {len(ftype.inputs)}", type_pos
            )
        n_results = sum(n for _, n, _ in results)
        if n_results != len(ftype.results):
            raise self.error(
                f"{name}: {n_results} result names but the type lists {len(ftype.results)}",
                start,
            )
        operands = [self.resolve(u, t) for u, t in zip(uses, ftype.inputs, strict=True)]
        op = Operation(name, operands, ftype.results, attributes, regions, props)
        op.loc = self.loc(op_pos)
        k = 0
        for rname, count, at in results:
            if count == 1:
                self.define(rname, op.results[k], at)
            else:
                for i in range(count):
                    self.define(f"{rname}#{i}", op.results[k + i], at)
            k += count
        return op

    def use(self) -> tuple[str, int]:
        at = self.here()
        m = self.match(_USE)
        if not m:
            raise self.error("expected an SSA value such as %0 or %arg0")
        name = m.group(1) + (f"#{m.group(2)}" if m.group(2) is not None else "")
        return name, at

    def resolve(self, use: tuple[str, int], t: T.Type) -> Value:
        name, at = use
        for scope in reversed(self.scopes):
            if name in scope:
                v = scope[name]
                if v.type != t and not isinstance(v, _Placeholder):
                    raise self.error(f"%{name} has type {v.type} but is used as {t}", at)
                return v
        ph = self.forward[-1].get(name)
        if ph is None:
            ph = self.forward[-1][name] = _Placeholder(name, at)
            ph.type = t
        return ph

    def define(self, name: str, v: Value, at: int) -> None:
        if name in self.scopes[-1]:
            raise self.error(f"%{name} is defined twice", at)
        self.scopes[-1][name] = v
        ph = self.forward[-1].pop(name, None)
        if ph is not None:
            if ph.type != v.type:
                raise self.error(f"%{name} has type {v.type} but is used as {ph.type}", ph.pos)
            ph.replace_all_uses_with(v)

    def close_scope(self) -> None:
        self.scopes.pop()
        pending = self.forward.pop()
        if pending:
            ph = min(pending.values(), key=lambda p: p.pos)
            if self.forward:  # may be defined later in the enclosing region
                for n, p in pending.items():
                    outer = self.forward[-1].get(n)
                    if outer is None:
                        self.forward[-1][n] = p
                    elif outer.type != p.type:
                        raise self.error(f"%{n} is used as {outer.type} and as {p.type}", p.pos)
                    else:
                        p.replace_all_uses_with(outer)
                return
            raise self.error(f"use of undefined value %{ph.name}", ph.pos)

    def region(self) -> Region:
        self.expect("{")
        self.scopes.append({})
        self.forward.append({})
        region = Region()
        block = None
        while not self.peek("}"):
            if self.peek("^"):
                block = region.add_block(self.block_header())
            elif block is None:
                block = region.add_block(Block())
            if self.peek("}") or self.peek("^"):
                continue
            block.append(self.operation())
        self.expect("}")
        self.close_scope()
        return region

    def block_header(self) -> Block:
        if not self.match(_BLOCK):
            raise self.error("expected a block label such as ^bb0")
        block = Block()
        if self.accept("(") and not self.accept(")"):
            while True:
                at = self.here()
                m = self.match(_VALUE)
                if not m:
                    raise self.error("expected a block argument such as %arg0")
                self.expect(":")
                self.define(m.group(1), block.add_arg(self.type()), at)
                if not self.accept(","):
                    break
            self.expect(")")
        self.expect(":")
        return block

    # -- attributes -------------------------------------------------------------------------
    def dict_entries(self, close: str) -> dict[str, A.Attribute]:
        entries: dict[str, A.Attribute] = {}
        if self.accept(close):
            return entries
        while True:
            at = self.here()
            if self.peek('"'):
                key = self.string()
            else:
                m = self.match(_BARE)
                if not m:
                    raise self.error("expected an attribute name")
                key = m.group(0)
            if key in entries:
                raise self.error(f"attribute {key!r} appears twice", at)
            entries[key] = self.attribute() if self.accept("=") else A.UnitAttr()
            if not self.accept(","):
                break
        self.expect(close)
        return entries

    def attribute(self) -> A.Attribute:
        with self.nested("attributes"):
            return self._attribute()

    def _attribute(self) -> A.Attribute:
        self.ws()
        at = self.pos
        if self.accept("true"):
            return A.BoolAttr(True)
        if self.accept("false"):
            return A.BoolAttr(False)
        if self.accept("unit"):
            return A.UnitAttr()
        if self.peek('"'):
            return A.StringAttr(self.string())
        if self.peek("@"):
            return self.symbol_ref()
        if self.accept("array<"):
            elt_at = self.here()
            elt = self.type()
            if not isinstance(elt, T.IntegerType):
                raise self.error("only integer dense arrays are supported", elt_at)
            vals = []
            if self.accept(":"):
                while True:
                    m = self.match(_INT)
                    if not m:
                        raise self.error("expected an integer")
                    vals.append(self.integer_attr(m.group(0), elt, m.start()).value)
                    if not self.accept(","):
                        break
            self.expect(">")
            return A.DenseArrayAttr(tuple(vals), elt)
        if self.accept("["):
            items = []
            if not self.accept("]"):
                while True:
                    items.append(self.attribute())
                    if not self.accept(","):
                        break
                self.expect("]")
            return A.ArrayAttr(tuple(items))
        if self.accept("{"):
            return A.DictAttr(self.dict_entries("}"))
        if m := self.match(_HEX):
            t = self.number_type(T.f64)
            bits = int(m.group(0), 16)
            if isinstance(t, T.FloatType):
                if bits >> t.width:
                    raise self.error(f"hexadecimal float constant out of range for {t}", at)
                return A.FloatAttr(A.float_from_bits(bits, t), t)
            return self.integer_attr(m.group(0), t, at)
        if m := self.match(_FLOAT):
            return self.float_attr(float(m.group(0)), self.number_type(T.f64), at)
        if m := self.match(_INT):
            t = self.number_type(T.i64)
            if isinstance(t, T.FloatType):
                return self.float_attr(float(m.group(0)), t, at)
            return self.integer_attr(m.group(0), t, at)
        try:
            return A.TypeAttr(self.type())
        except IRParseError:
            raise self.error("expected an attribute value", at) from None

    def number_type(self, default: T.Type) -> T.Type:
        return self.type() if self.accept(":") else default

    def integer_attr(self, literal: str, t: T.Type, at: int) -> A.IntegerAttr:
        """A decimal or 0x literal that fits `t`, read signed or unsigned as MLIR does."""
        if not isinstance(t, (T.IntegerType, T.IndexType)):
            raise self.error(f"an integer literal cannot have type {t}", at)
        width = t.width if isinstance(t, T.IntegerType) else 64
        digits = len(literal.lstrip("-").removeprefix("0x").lstrip("0"))
        base = 16 if "0x" in literal else 10
        v = int(literal, base) if digits <= MAX_INT_WIDTH // 3 else None  # 2**w < 10**(w/3)
        if v is None or not -(1 << (width - 1)) <= v < (1 << width):
            raise self.error(f"integer literal out of range for {t}", at)
        return A.IntegerAttr(v, t)

    def float_attr(self, v: float, t: T.Type, at: int) -> A.FloatAttr:
        if not isinstance(t, T.FloatType):
            raise self.error(f"a float literal cannot have type {t}", at)
        try:  # keep the value the type can hold
            return A.FloatAttr(A.float_from_bits(A.float_bits(v, t), t), t)
        except OverflowError:
            raise self.error(f"float literal out of range for {t}", at) from None

    def symbol_ref(self) -> A.SymbolRefAttr:
        names = []
        while True:
            self.expect("@")
            if self.peek('"'):
                names.append(self.string())
            else:
                m = self.match(_BARE)
                if not m:
                    raise self.error("expected a symbol name")
                names.append(m.group(0))
            if not self.accept("::"):
                break
        return A.SymbolRefAttr(names[0], tuple(names[1:]))

    # -- types ------------------------------------------------------------------------------
    def type(self) -> T.Type:
        with self.nested("types"):
            return self._type()

    def _type(self) -> T.Type:
        self.ws()
        at = self.pos
        if self.accept("("):
            ins = self.type_list(")")
            self.expect("->")
            if self.accept("("):
                outs = self.type_list(")")
            else:
                outs = [self.type()]
            return T.FunctionType(ins, outs)
        if self.accept("tensor<*x"):
            elt = self.type()
            self.expect(">")
            return T.UnrankedTensorType(elt)
        for kw, cls in (("tensor<", T.TensorType), ("memref<", T.MemRefType)):
            if self.accept(kw):
                dims = []
                while m := _DIM.match(self.text, self.pos):
                    dims.append(None if m.group(1) == "?" else self.dim(m.group(1)))
                    self.pos = m.end()
                elt = self.type()
                self.expect(">")
                return cls(tuple(dims), elt)
        if self.accept("!"):
            m = self.match(re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z0-9_.$]+)"))
            if not m:
                raise self.error("expected a dialect type such as !cke.q8_0")
            return T.DialectType(m.group(1), m.group(2))
        m = self.match(re.compile(r"(i\d+|index|bf16|f16|f32|f64)(?![A-Za-z0-9_])"))
        if m:
            word = m.group(1)
            if word == "index":
                return T.index
            if word.startswith("i"):
                return self.integer_type(word, at)
            return T.FloatType(word)
        raise self.error("expected a type", at)

    def integer_type(self, word: str, at: int) -> T.IntegerType:
        if len(word) > 5 or not 1 <= int(word[1:]) <= MAX_INT_WIDTH:
            raise self.error(f"integer type {word[:12]} is not i1 to i{MAX_INT_WIDTH}", at)
        return T.IntegerType(int(word[1:]))

    def dim(self, digits: str) -> int:
        # A size beyond any memory would only overflow the byte counts computed from it.
        if len(digits) > 19 or int(digits) > MAX_BYTES:
            raise self.error(f"dimension {digits[:20]} is larger than {MAX_BYTES}")
        return int(digits)

    def type_list(self, close: str) -> list[T.Type]:
        out = []
        if self.accept(close):
            return out
        while True:
            out.append(self.type())
            if not self.accept(","):
                break
        self.expect(close)
        return out


def _clip(text: str, start: int, end: int, width: int = 4096) -> str | None:
    """The line shown under an error: whole if short; a very long line (hostile or
    minified IR) is not worth printing, and the caret needs the real column."""
    end = len(text) if end < 0 else end
    return text[start:end] if end - start <= width else None


def _unescape(s: str) -> str:
    out = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            if nxt in '\\"':
                out += nxt.encode()
                i += 2
                continue
            if nxt == "n":
                out += b"\n"
                i += 2
                continue
            if nxt == "t":
                out += b"\t"
                i += 2
                continue
            out.append(int(s[i + 1 : i + 3], 16))
            i += 3
            continue
        out += c.encode("utf-8")
        i += 1
    return out.decode("utf-8", errors="surrogateescape")


def parse_ir(text: str, filename: str = "<ir>") -> Operation:
    """Parse IR text; returns the `builtin.module` (wrapping top-level ops if there is none)."""
    p = Parser(text, filename)
    try:
        return p.parse_top()
    except (ValueError, IndexError) as e:
        raise p.error(f"malformed IR: {e}") from None
    except RecursionError:
        raise p.error("attributes or regions nested too deeply") from None
