"""The `ingest` source: .eml files, directories, mbox files and Maildirs, as (raw bytes, label) pairs."""

from __future__ import annotations

import mailbox
import os
from collections.abc import Iterator
from pathlib import Path

MBOX_SUFFIXES = {".mbox", ".mbx"}


def is_maildir(path: Path) -> bool:
    return all((path / sub).is_dir() for sub in ("cur", "new", "tmp"))


def _looks_like_mbox(path: Path) -> bool:
    if path.suffix.lower() in MBOX_SUFFIXES:
        return True
    if path.suffix.lower() == ".eml":
        return False  # one message per .eml, even when it starts with a From_ line
    with path.open("rb") as fh:
        head = fh.read(5)
    return head == b"From " and path.suffix == ""


def iter_messages(path: Path) -> Iterator[tuple[bytes, str]]:
    """Every message under `path`; raises OSError for a path that cannot be read."""
    if path.is_dir():
        if is_maildir(path):
            box = mailbox.Maildir(path, factory=None, create=False)
            for key in sorted(box.keys()):
                yield box.get_bytes(key), f"{path}/{key}"
            return
        for root, dirs, files in os.walk(path):
            dirs.sort()
            here = Path(root)
            if here != path and is_maildir(here):
                dirs[:] = []
                yield from iter_messages(here)
                continue
            if here.name in ("cur", "new", "tmp") and is_maildir(here.parent):
                continue
            for name in sorted(files):
                if not name.startswith("."):
                    yield from iter_messages(here / name)
        return
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if _looks_like_mbox(path):
        box = mailbox.mbox(path, factory=None, create=False)
        for i, key in enumerate(box.keys()):
            yield box.get_bytes(key), f"{path}#{i + 1}"
        return
    yield path.read_bytes(), str(path)


def count_messages(paths: list[Path]) -> int | None:
    """A cheap total for the progress bar: files only (mbox contents are not counted up front)."""
    total = 0
    for path in paths:
        if path.is_dir():
            for _root, _dirs, files in os.walk(path):
                total += sum(1 for f in files if not f.startswith("."))
        elif path.exists():
            total += 1
    return total
