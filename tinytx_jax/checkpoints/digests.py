"""A SHA-256 digest of every file of a committed checkpoint, checked before it is read.

Orbax does not checksum array data: a flipped byte in a saved array would load as other
weights without a word. Once a save has committed, `write` records the digest of each
file under the step directory in `<step>/digests.json`; `verify` recomputes them before
a restore and raises DigestMismatch naming the first file that differs, which the loader
treats as an unreadable checkpoint (reported, then the previous one is used). A step
without the file (saved before this existed, or killed before its digests were written)
is read as before; a damaged record (DigestsUnreadable) is reported as such, with how to
load the step unverified.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

DIGESTS_FILE = "digests.json"
ITEMS = ("state", "meta")


class DigestMismatch(Exception):
    """A checkpoint file's content is not what was saved."""


class DigestsUnreadable(Exception):
    """The record of a checkpoint's digests is itself damaged: its files cannot be checked."""


def _files(step_dir: Path) -> list[Path]:
    return sorted(p for item in ITEMS for p in (step_dir / item).rglob("*") if p.is_file())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write(step_dir: Path) -> None:
    """Record the digests of a committed step (written aside, then renamed: atomic)."""
    if not step_dir.is_dir():
        return  # pruned by retention meanwhile
    digests = {str(p.relative_to(step_dir)): _sha256(p) for p in _files(step_dir)}
    partial = step_dir / (DIGESTS_FILE + ".tmp")
    partial.write_text(json.dumps(digests, indent=0, sort_keys=True))
    partial.rename(step_dir / DIGESTS_FILE)


def verify(step_dir: Path) -> None:
    """Raise DigestMismatch if a recorded file is missing or differs, DigestsUnreadable if
    the record cannot be read."""
    recorded = step_dir / DIGESTS_FILE
    if not recorded.exists():
        return
    try:
        digests = json.loads(recorded.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DigestsUnreadable(f"{recorded} is unreadable ({error})") from None
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise DigestsUnreadable(f"{recorded} is not a table of file digests")
    for name, expected in digests.items():
        path = step_dir / name
        if not path.is_file() or _sha256(path) != expected:
            raise DigestMismatch(f"digest mismatch: {name} is not what was saved")
