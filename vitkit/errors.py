"""One exception type for user mistakes, so the CLI can print one line instead of a traceback."""

from __future__ import annotations

import difflib
from typing import Iterable


class VitkitError(ValueError):
    """A problem with the user's input (a name, a file, a value): the message says which and why.

    Always one line: line breaks inside echoed user values are shown escaped."""

    def __init__(self, message: str = "") -> None:
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


def unknown(kind: str, name: str, valid: Iterable[str]) -> VitkitError:
    """Error for an unknown name that suggests the closest valid one."""
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid: {', '.join(sorted(valid)[:12])}"
    return VitkitError(f"unknown {kind} '{name}'{hint}")
