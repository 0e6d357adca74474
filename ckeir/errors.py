"""The CkeError family: every user-facing error carries a location and an actionable message.

The CLI prints ``err.format()`` and exits non-zero; it never shows a Python traceback for a
CkeError.  Anything below the CLI raises one of these instead of a bare exception.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class SourceLoc:
    """A position in a text file (1-based line and column)."""

    file: str
    line: int
    col: int
    source_line: str | None = None  # the text of that line, for the caret display

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    @classmethod
    def at_byte(cls, file: str, data: bytes, offset: int) -> SourceLoc:
        """Where byte `offset` of undecoded `data` is (e.g. the first byte that is not
        UTF-8): its line, its column in characters, and the line as far as it decodes."""
        start = data.rfind(b"\n", 0, offset) + 1
        end = data.find(b"\n", offset)
        line = data[start : end if end >= 0 else len(data)].decode("utf-8", "replace")
        col = len(data[start:offset].decode("utf-8", "replace")) + 1
        return cls(file, data.count(b"\n", 0, offset) + 1, col, line)

    @classmethod
    def in_text(cls, file: str, text: str, line: int, col: int) -> SourceLoc:
        lines = text.splitlines()
        src = lines[line - 1] if 0 < line <= len(lines) else None
        return cls(file, line, col, src)


class CkeError(Exception):
    """Base of all errors ckeir reports to users."""

    kind = "error"

    def __init__(self, message: str, loc: SourceLoc | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.hint = hint

    def format(self) -> str:
        head = (
            f"{self.loc}: {self.kind}: {self.message}"
            if self.loc
            else f"{self.kind}: {self.message}"
        )
        out = [head]
        if self.loc is not None and self.loc.source_line is not None:
            line, caret = _window(self.loc.source_line.rstrip("\n"), max(self.loc.col - 1, 0))
            out.append("    " + line)
            out.append("    " + " " * caret + "^")
        if self.hint:
            out.append(f"note: {self.hint}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.format()


SHOWN_LINE = 100  # characters of a source line shown above the caret


def _window(line: str, col: int) -> tuple[str, int]:
    """At most SHOWN_LINE characters of `line` around 0-based `col`, cut ends marked with
    "…", and the caret's column in what is shown (a 1 MiB one-line spec stays readable)."""
    if len(line) <= SHOWN_LINE:
        return line, col
    start = min(max(col - SHOWN_LINE // 2, 0), len(line) - SHOWN_LINE)
    shown = line[start : start + SHOWN_LINE]
    head = "…" if start > 0 else ""
    tail = "…" if start + SHOWN_LINE < len(line) else ""
    return head + shown + tail, col - start + len(head)


class SpecError(CkeError):
    """A `.cke` file is malformed or inconsistent."""


class IRParseError(CkeError):
    """IR text that does not parse."""


class VerifyError(CkeError):
    """IR that parses but breaks an op's contract."""

    kind = "verifier error"


class PassError(CkeError):
    """A pass pipeline that is unknown or fails."""


class ModelFileError(CkeError):
    """A weights file that is missing, truncated or does not match the model."""


class BackendError(CkeError):
    """Code generation, compilation or execution failed."""


class TransportError(CkeError):
    """A rank or link failed during a distributed run."""
