"""interpreter.settle: what exists at start is left out of later collections, garbage is not."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from mailbridge import interpreter


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


@pytest.fixture
def settled() -> Iterator[None]:
    try:
        yield
    finally:
        gc.unfreeze()  # the rest of the test run collects as before


def test_settle_frees_start_up_garbage_and_freezes_the_rest(settled: None) -> None:
    kept = Node()
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage
    interpreter.settle()
    assert gone() is None  # collected before the freeze, not kept for the life of the process
    assert gc.get_freeze_count() > 0
    assert kept not in gc.get_objects()  # left out of every later collection


def test_garbage_made_after_settle_is_still_collected(settled: None) -> None:
    interpreter.settle()
    later = Node()
    gone = weakref.ref(later)
    del later
    gc.collect()
    assert gone() is None
