"""The README's quick tour runs as written from a fresh clone: every `$ ` line of its console
block is run, in order, in a new directory holding what a clone has (config/ and examples/),
on a terminal as a reader would (so progress and summaries look as they do for people), and its
output must equal the lines the README shows under it. In those lines `...` matches any text."""

from __future__ import annotations

import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def tour() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each `$ ` line of the tour block."""
    text = README.read_text()
    block = text[text.index("<!-- tour -->") : text.index("<!-- /tour -->")]
    body = block.split("```console\n", 1)[1].rsplit("```", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


def on_a_terminal(command: str, cwd: Path, env: dict[str, str]) -> tuple[int, list[str]]:
    """Run one shell command with a pseudo-terminal for stdin, stdout and stderr."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        ["bash", "-c", command], cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    code = proc.wait(timeout=120)
    text = _ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")
    return code, [line.rstrip() for line in text.splitlines()]


def matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.rstrip().split("..."))
    return re.fullmatch(pattern, actual) is not None


def test_tour_block_is_found() -> None:
    commands = [command for command, _ in tour()]
    assert len(commands) >= 10
    assert all(command.startswith("mailbridge ") for command in commands)


def test_the_quick_tour_runs_as_written(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copytree(ROOT / "config", clone / "config")
    shutil.copytree(ROOT / "examples", clone / "examples")
    bin_dir = tmp_path / "bin"  # `mailbridge` is this interpreter's, whatever PATH holds
    bin_dir.mkdir()
    (bin_dir / "mailbridge").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m mailbridge "$@"\n')
    (bin_dir / "mailbridge").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "MAILBRIDGE_CONFIG"}
    env |= {"PATH": f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}", "PYTHONPATH": str(ROOT)}
    for command, expected in tour():
        code, actual = on_a_terminal(command, clone, env)
        assert code == 0, (command, actual)
        assert len(actual) == len(expected), (command, actual)
        for want, got in zip(expected, actual, strict=True):
            assert matches(want, got), (command, want, got)
