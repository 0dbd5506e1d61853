"""Text from files and file names, made safe to print: one line, no terminal control.

A file name may hold a newline (forging a line in ``ask``'s source list) or bytes that are not UTF-8, and a
document may hold terminal escape sequences (moving the cursor, recolouring, rewriting what was printed) or
bidirectional overrides. Everything the command prints that came from a file or its name goes through here.
"""

from __future__ import annotations

import os
import re

# C0 and C1 controls (newline and tab included: a printed name or snippet is one line), DEL, and the Unicode
# line separators and bidirectional controls that reorder what a terminal shows.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, *, lines: bool = False) -> str:
    """Return ``text`` with each unsafe character written as its escape (``\\n``, ``\\x1b``, ``\\u202e``).

    With ``lines``, line breaks and tabs are kept (a streamed answer's paragraphs); every other control is escaped.
    """

    def escape(found: re.Match[str]) -> str:
        char = found.group()
        return char if lines and char in "\n\t" else char.encode("unicode_escape").decode("ascii")

    return _UNSAFE.sub(escape, text)


def path_name(path: os.PathLike[str] | str) -> str:
    """Return a path as a printable string; bytes that are not UTF-8 are shown as ``\\xNN``."""
    raw = os.fsencode(path)
    return printable(raw.decode("utf-8", errors="backslashreplace"))


def is_valid_name(path: os.PathLike[str] | str) -> bool:
    """Whether a path is valid Unicode (a name in another encoding arrives with lone surrogates)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
