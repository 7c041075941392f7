"""The results directory's durable parts: an append-only record, atomic files, a manifest.

- `record.jsonl`: one JSON line per finished prompt-round, appended and fsynced as it
  finishes. A line is written only after the prompt-round's own files are in place, so a line
  means the work is done; a half-written last line (a kill mid-write) is ignored on reading.
- Files are written atomically: to a temporary name in the same directory, fsynced, then
  renamed, so a kill never leaves a half-written file that looks whole.
- `run.json`: the manifest — a fingerprint of the recipe and prompts — so a directory made by
  another recipe is refused instead of being mixed with this one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["Record", "atomic_write", "atomic_path", "fingerprint", "read_manifest", "write_manifest"]

MANIFEST = "run.json"
RECORD = "record.jsonl"


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` all at once or not at all."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` (after an fsync) on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fingerprint(recipe_text: str) -> str:
    """A stable hash of what determines the results (the recipe as run, prompts inline)."""
    return hashlib.sha256(recipe_text.encode()).hexdigest()[:16]


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def write_manifest(out: Path, data: dict[str, Any]) -> None:
    atomic_write(Path(out) / MANIFEST, json.dumps(data, indent=1) + "\n")


def clear(out: Path) -> list[str]:
    """Remove everything in a results directory; returns what was removed (names)."""
    removed = []
    for child in sorted(Path(out).iterdir()):
        removed.append(child.name + ("/" if child.is_dir() else ""))
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    return removed


class Record:
    """The append-only record of finished prompt-rounds."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / RECORD

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything after it was never acknowledged
        return rows

    def repair(self) -> None:
        """Drop a trailing partial line left by a kill mid-write."""
        rows = self.read()
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        if self.path.is_file() and self.path.read_text() != text:
            atomic_write(self.path, text)

    def append(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
