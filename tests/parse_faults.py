"""Faults for the parse pool's tests, run in its worker processes (imported there by name).

Kept apart from the test modules so a fresh worker imports little before it starts a task.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from pathlib import Path

from mailbridge.parse_pool import ParseResult, parse_safely

STALL = "X-Test-Parse-Stall"
DIE = "X-Test-Parse-Die"


def stalling_parse(raw: bytes) -> ParseResult:
    """`parse_safely`, but in a worker process a mail with the STALL header first touches the
    file it names (so the test knows the stall began), then holds the worker's GIL in one C
    call that would run for hours (catastrophic backtracking), as the encoded-word bomb did;
    a mail with the DIE header kills its worker."""
    if multiprocessing.parent_process() is not None:
        if (found := re.search(rb"\n" + STALL.encode() + rb":\s*(\S+)", raw)) is not None:
            Path(found.group(1).decode()).touch()
            re.match(r"(?:a|a)*b", "a" * 64)
        if b"\n" + DIE.encode() + b":" in raw:
            os._exit(3)
    return parse_safely(raw)


def stalling_chunk(raws: list[bytes]) -> list[ParseResult]:
    return [stalling_parse(raw) for raw in raws]
