"""Several nodes at the same moment: each App (or Desk) built on one database URL has its own
engine and connections, so two of them stand for two `mailbridge run` nodes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

Node = TypeVar("Node")
Result = TypeVar("Result")


def at_once(
    work: Callable[[Node], Result], nodes: Sequence[Node], timeout: float | None = None
) -> list[Result]:
    """`work(node)` for every node, each on its own thread, all released together; the results
    in the order of `nodes`. A node's exception fails the caller, not only its thread."""
    start = threading.Barrier(len(nodes))
    results: dict[int, Result] = {}
    errors: list[BaseException] = []

    def run(index: int, node: Node) -> None:
        try:
            start.wait()
            results[index] = work(node)
        except BaseException as exc:  # raised below, from the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads), f"a node ran over {timeout} s"
    return [results[index] for index in range(len(nodes))]
