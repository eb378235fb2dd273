"""What commands print: lines to stdout (a failed write is one line too), warnings,
times, and names quoted on a terminal as GNU ls quotes them."""

from __future__ import annotations

import os
import sys
import time

from ..errors import CvmfsError


class OutputError(CvmfsError):
    """Standard output cannot be written (a full disk, a closed descriptor)."""


def _stdout(op, *args) -> None:
    """op(*args) on standard output; a failure other than a closed pipe is one line."""
    try:
        op(*args)
    except BrokenPipeError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write to standard output: {e.strerror or e}") from None


def write(data: bytes) -> None:
    """Bytes to stdout."""
    _stdout(sys.stdout.buffer.write, data)


def line(text: str) -> None:
    """One line to stdout; names are bytes on Linux and leave as the bytes they are."""
    write(text.encode("utf-8", "surrogateescape") + b"\n")


def json_line(record: dict) -> None:
    """One JSON object a line, the form of every command's --json (names as the
    characters they are, non-UTF-8 bytes as surrogate escapes)."""
    import json

    line(json.dumps(record, ensure_ascii=False))


def flush() -> None:
    """Flush stdout (where a full disk shows)."""
    _stdout(sys.stdout.flush)


def warn(text: str) -> None:
    print(f"parrot_cvmfs: {text}", file=sys.stderr, flush=True)


def utc(t: int, fmt: str) -> str:
    """A timestamp from a catalog as UTC text (the number itself if no calendar has it)."""
    try:
        return time.strftime(fmt, time.gmtime(t))
    except (OverflowError, OSError, ValueError):
        return str(t)


# Terminal display of names as GNU ls shows them (--quoting-style=shell-escape, its
# default on a terminal): a name a shell would read differently is quoted, control
# characters become $'\n' escapes, so no name can move the cursor or recolour the
# terminal; piped, names stay raw.
_SHELL_SPECIAL = frozenset(" !\"$&'()*;<=>?[\\^`|")
_DOUBLE_QUOTE_SAFE = frozenset(
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz %+,-./:@]_'"
)
_LETTER_ESCAPES = {7: "a", 8: "b", 9: "t", 10: "n", 11: "v", 12: "f", 13: "r"}
_UNPRINTABLE = frozenset(("Cc", "Cn", "Cs", "Zl", "Zp"))


def locale_is_utf8(env=os.environ) -> bool:
    value = env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or ""
    return "utf-8" in value.lower() or "utf8" in value.lower()


def quote_name(name: str, utf8: bool = True) -> str:
    """`name` (surrogate escapes for non-UTF-8 bytes) as GNU ls prints it on a
    terminal; `utf8`: the locale's characters beyond ASCII are printable."""
    import unicodedata

    units: list[tuple[str, bool]] = []  # (text, is an escape)
    for c in name:
        o = ord(c)
        if 0x20 <= o < 0x7F or (
            utf8 and o >= 0xA0 and not 0xDC80 <= o <= 0xDCFF
            and unicodedata.category(c) not in _UNPRINTABLE
        ):  # fmt: skip
            units.append((c, False))
        else:
            escapes = [
                "\\" + _LETTER_ESCAPES[b] if b in _LETTER_ESCAPES else f"\\{b:03o}"
                for b in c.encode("utf-8", "surrogateescape")
            ]
            units.append(("".join(escapes), True))
    escaped = any(esc for _, esc in units)
    if not (
        escaped
        or name in ("{", "}")
        or name[:1] in ("#", "~")
        or any(c in _SHELL_SPECIAL for c in name)
    ):
        return name
    quote = "'" in name
    if quote and not escaped:
        rest = name[1:] if name[:1] in ("#", "~") else name
        if all(c in _DOUBLE_QUOTE_SAFE or ord(c) > 0x7F for c in rest):
            return f'"{name}"'
    # single quotes, $'...' around escapes, '\'' for a quote; as in GNU's quotearg, a
    # name with a quote that ends in an escape starts as if in an escape (it measures
    # the name first and keeps that pass's state)
    pending = quote and units[-1][1]
    out = ["'"]
    for text, esc in units:
        if esc:
            if not pending:
                out.append("'$'")
                pending = True
            out.append(text)
        elif text == "'":
            out.append("'\\''")
            pending = False
        else:
            if pending:
                out.append("''")
                pending = False
            out.append(text)
    out.append("'")
    return "".join(out)


def display(name: str) -> str:
    """A name for stdout: quoted on a terminal, raw otherwise."""
    if STDOUT_IS_TTY:
        return quote_name(name, locale_is_utf8())
    return name


STDOUT_IS_TTY = False


def detect_terminal() -> None:
    """Whether names are quoted (`display`): when stdout is a terminal."""
    global STDOUT_IS_TTY
    try:
        STDOUT_IS_TTY = sys.stdout.isatty()
    except (AttributeError, ValueError):
        STDOUT_IS_TTY = False
