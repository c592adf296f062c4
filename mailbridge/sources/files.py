"""The `ingest` source: .eml files, directories, mbox files and Maildirs, as (raw bytes, label) pairs."""

from __future__ import annotations

import mailbox
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

MBOX_SUFFIXES = {".mbox", ".mbx"}


class Skipped(OSError):
    """A path that is not read at all: not a regular file, or larger than the size limit."""


def human_size(size: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}".replace(".0 ", " ")
        size /= 1024
    raise AssertionError("unreachable")


def _check(path: Path, size: int, max_size: int | None) -> None:
    if max_size is not None and size > max_size:
        raise Skipped(
            f"{path}: {human_size(size)} is over [smtp] max_message_size "
            f"({human_size(max_size)}); the file is left alone"
        )


def _regular(path: Path) -> os.stat_result:
    # checked before any open(): opening a FIFO blocks until a writer comes, a device may never end
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(info.st_mode)
            else "a device"
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "not a regular file"
        )
        raise Skipped(f"{path}: {kind}, skipped")
    return info


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


def iter_messages(
    path: Path,
    max_size: int | None = None,
    on_skip: Callable[[Skipped], None] | None = None,
) -> Iterator[tuple[bytes, str]]:
    """Every message under `path`; raises OSError for a path that cannot be read.

    A message over `max_size` bytes, a FIFO or a device is never read: it goes to `on_skip`
    (raised when there is none), and the walk goes on with the next one."""
    try:
        yield from _messages(path, max_size, on_skip)
    except Skipped as exc:
        if on_skip is None:
            raise
        on_skip(exc)


def _messages(
    path: Path, max_size: int | None, on_skip: Callable[[Skipped], None] | None
) -> Iterator[tuple[bytes, str]]:
    if path.is_dir():
        if is_maildir(path):
            box = mailbox.Maildir(path, factory=None, create=False)
            for key in sorted(box.keys()):
                try:
                    # mailbox has no public way to name a message's file; _lookup is stable since 2.x
                    where = path / box._lookup(key)  # type: ignore[attr-defined]
                    _check(where, _regular(where).st_size, max_size)
                except Skipped as exc:
                    if on_skip is None:
                        raise
                    on_skip(exc)
                    continue
                yield box.get_bytes(key), f"{path}/{key}"
            return
        for root, dirs, files in os.walk(path):
            dirs.sort()
            here = Path(root)
            if here != path and is_maildir(here):
                dirs[:] = []
                yield from iter_messages(here, max_size, on_skip)
                continue
            if here.name in ("cur", "new", "tmp") and is_maildir(here.parent):
                continue
            for name in sorted(files):
                if not name.startswith("."):
                    yield from iter_messages(here / name, max_size, on_skip)
        return
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    size = _regular(path).st_size
    if _looks_like_mbox(path):
        mbox = mailbox.mbox(path, factory=None, create=False)
        for i, key in enumerate(mbox.keys()):
            start, stop = mbox._toc[key]  # type: ignore[attr-defined]  # offsets, found by keys()
            try:
                _check(Path(f"{path}#{i + 1}"), stop - start, max_size)
            except Skipped as exc:
                if on_skip is None:
                    raise
                on_skip(exc)
                continue
            yield mbox.get_bytes(key), f"{path}#{i + 1}"
        return
    _check(path, size, max_size)
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
