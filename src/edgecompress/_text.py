"""Untrusted text, printed safely: control characters escaped, so a label, a file name or a manifest field cannot move
the cursor, recolour the terminal, rewrite the title or hide text (ANSI/OSC escape sequences, C1 controls, bidi
overrides).

Used for every CLI line (errors included), log lines in the CLI and ``report.md``. The bundle's standalone ``run.py``
carries a copy of :func:`printable` (it imports nothing of edgecompress); ``tests/test_trust_received.py`` pins the
two to the same output.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls, and the invisible format characters that reorder or hide text (bidi embeddings,
# overrides and isolates, line/paragraph separators).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``str(text)`` with every control or invisible formatting character written as a ``\\xNN`` / ``\\uNNNN`` escape
    (``\\n``, ``\\r``, ``\\t`` by name). Plain text, accents and other scripts are unchanged."""
    return _UNSAFE.sub(_escape, str(text))
