"""Where the tests run: the repository, the mail corpus, the PostgreSQL test server, and whether this
is CI, where a server that cannot start fails the run instead of skipping it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("MAILBRIDGE_CORPUS", REPO.parent / "shared" / "corpus"))
PG_URL = os.environ.get("MAILBRIDGE_TEST_DATABASE_URL", "")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(reason: str | None, tests: str) -> None:
    """Skip when `reason` says a server cannot run here (None: it can); in CI fail instead."""
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"{reason}; CI must run {tests}")
    pytest.skip(reason)
