"""Files one process writes for another to read: whole or not there at all.

A reader polls for a marker's existence and then reads it; a plain ``write_text`` creates the
file before it writes its text, so the reader can find it empty. Writing to a temporary name
in the same folder and renaming it into place makes the file appear complete.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees all of it or no file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
