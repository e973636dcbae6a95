"""What the data scripts share: one line and exit status 2 on a failure, and the write."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn


def fail(message: str) -> NoReturn:
    """Stop with one line on stderr (as main.py does): the problem and what to do."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_writable(path: Path) -> None:
    """Refuse, before any work, an output path under a regular file."""
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        fail(f"cannot write {path}: {blocking} is a file, not a folder; give another --out")


def write(path: Path, data: bytes) -> None:
    """Write `data` to `path`, making its folder; a path that cannot be written is one line."""
    check_writable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as error:
        where = error.filename or path
        fail(f"cannot write {path}: {error.strerror or error} ({where}); give another --out")
