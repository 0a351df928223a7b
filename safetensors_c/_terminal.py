"""Text from a file, made safe to show on a terminal.

A tensor name, a metadata value or a file name is chosen by whoever wrote the
file. Printed raw, its control characters drive the terminal: ESC starts
sequences that set the window title, clear the screen or plant a hyperlink;
CR and BS overwrite what is already on the line; U+009B is a one-character
CSI; bidi controls (U+202E, ...) reorder what follows. Everything shown here
goes through one of these functions first.

The rule is Python's own ``repr``: a character ``str.isprintable()`` rejects
(C0 and C1 controls, DEL, format characters such as bidi controls and zero-
width characters, line and paragraph separators, non-ASCII spaces, lone
surrogates, private-use and unassigned code points) is written as a visible
escape: ``\\t``, ``\\n``, ``\\r``, ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``.

- ``escape_name``: names, keys and paths. A backslash is doubled, so the
  shown text maps back to exactly one original (``a\\x1bb`` is ESC, and
  ``a\\\\x1bb`` is a backslash followed by ``x1b``).
- ``escape_prose``: metadata values, free text. As ``escape_name``, but the
  zero-width joiner and non-joiner (U+200D, U+200C: needed to spell Persian,
  Hindi and emoji sequences) and non-ASCII spaces stay as they are: they
  neither move the cursor nor reorder text.
- ``escape_message``: a line in our own words that may quote file text
  (mostly through ``repr``, whose backslashes must not be doubled again).
  Runs of spaces, tabs and newlines become one space; every other unsafe
  character is escaped. Applying it twice changes nothing.
- ``dumps``: JSON that loads back to exactly the original strings and holds
  no unsafe character, even in strings (``json.dumps`` leaves DEL, C1 and
  bidi controls raw, and with ``ensure_ascii=False`` lone surrogates too).
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

__all__ = ["dumps", "escape_message", "escape_name", "escape_prose"]

_SHORT = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_PROSE_KEEP = frozenset("\u200c\u200d")
_BLANKS = re.compile(r"[ \t\n]+")


def _escape_char(ch: str) -> str:
    short = _SHORT.get(ch)
    if short is not None:
        return short
    cp = ord(ch)
    if cp < 0x100:
        return f"\\x{cp:02x}"
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def _escape(text: str, keep_prose: bool, double_backslash: bool) -> str:
    if text.isprintable() and not (double_backslash and "\\" in text):
        return text  # the common case, checked at C speed
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\" if double_backslash else ch)
        elif ch.isprintable() or (keep_prose and (ch in _PROSE_KEEP
                                                  or unicodedata.category(ch) == "Zs")):
            out.append(ch)
        else:
            out.append(_escape_char(ch))
    return "".join(out)


def escape_name(text: str) -> str:
    """A name, key or path, shown unambiguously on one line."""
    return _escape(str(text), keep_prose=False, double_backslash=True)


def escape_prose(text: str) -> str:
    """A metadata value or other free text, on one line (see the module doc)."""
    return _escape(str(text), keep_prose=True, double_backslash=True)


def escape_message(text: str) -> str:
    """One line of a message: blanks collapsed, unsafe characters escaped,
    backslashes kept (a quoted ``repr`` is already unambiguous)."""
    return _escape(_BLANKS.sub(" ", str(text)).strip(), keep_prose=False,
                   double_backslash=False)


def _json_escape(ch: str) -> str:
    cp = ord(ch)
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    cp -= 0x10000  # a UTF-16 surrogate pair, as JSON spells code points above U+FFFF
    return f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}"


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` whose every non-printable character (inside strings: the
    only place one can be, with ``indent`` a number) is a ``\\u`` escape; other
    text stays readable."""
    text = json.dumps(value, ensure_ascii=False, **options)
    # Every newline is one of indent=: json.dumps escapes those inside strings.
    if text.replace("\n", "").isprintable():
        return text  # the common case, checked at C speed
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.isprintable():
            lines[i] = "".join(ch if ch.isprintable() else _json_escape(ch) for ch in line)
    return "\n".join(lines)
