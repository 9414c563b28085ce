"""Printing untrusted text (customer and model messages) to a terminal safely."""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, C1 controls (ESC sequences and OSC start with these),
# and the bidi overrides that can make text read differently from what it is.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def safe(text: str) -> str:
    """``text`` with control characters shown as visible escapes, so it cannot move the cursor,
    retitle the window or fake a line of output."""
    return _UNSAFE.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text
    )
