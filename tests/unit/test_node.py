"""A process's incarnation, as another process on the same machine checks it: real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace

import pytest

from mailbridge import node
from tests.env import REPO

# the child reports the incarnation it computes itself, exactly as a mailbridge process would
CHILD = (
    "from mailbridge import node; print(node.current(), flush=True); import sys; sys.stdin.read()"
)


@pytest.fixture
def child() -> Iterator[tuple[subprocess.Popen[str], node.Incarnation]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    found = node.Incarnation.parse(proc.stdout.readline())
    assert found is not None
    yield proc, found
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_this_process_is_alive_and_its_record_reads_back() -> None:
    me = node.current()
    assert node.Incarnation.parse(str(me)) == me
    assert not me.is_gone()


def test_a_running_process_is_alive_until_it_exits(
    child: tuple[subprocess.Popen[str], node.Incarnation],
) -> None:
    proc, other = child
    assert other.pid == proc.pid and other != node.current()
    assert not other.is_gone()
    proc.communicate("")  # it exits and is reaped
    assert other.is_gone()


def test_a_killed_process_not_yet_reaped_is_gone(
    child: tuple[subprocess.Popen[str], node.Incarnation],
) -> None:
    proc, other = child
    proc.kill()
    # wait for its death without reaping it: a zombie still answers kill(pid, 0)
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    assert other.is_gone()


def test_a_reused_pid_is_not_the_recorded_process(
    child: tuple[subprocess.Popen[str], node.Incarnation],
) -> None:
    _proc, other = child
    assert replace(other, start="1").is_gone()


def test_a_process_that_cannot_be_checked_counts_as_alive(
    child: tuple[subprocess.Popen[str], node.Incarnation],
) -> None:
    proc, other = child
    proc.communicate("")
    # after its exit: still unverifiable when recorded on another boot or in another container
    assert not replace(other, boot="another-boot").is_gone()
    assert not replace(other, pidns="pid:[1]").is_gone()


@pytest.mark.parametrize("text", [None, "", "owner-from-an-older-version", "host=a pid=x"])
def test_records_without_a_process_are_not_incarnations(text: str | None) -> None:
    assert node.Incarnation.parse(text) is None


def test_the_node_id_defaults_to_the_host_name() -> None:
    assert node.default_node_id("mb1") == "mb1"
    assert node.default_node_id(None) == node.current().host
