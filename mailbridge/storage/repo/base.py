"""Helpers the repositories share: Core table handles, single-row inserts, bounded counts."""

from __future__ import annotations

import hashlib
from typing import Any, cast

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.engine import CursorResult, Result


def key_of(message_id: str) -> str:
    """The Message-ID index key: a fixed-size hash, whatever the ID's length."""
    return hashlib.sha256(message_id.encode("utf-8", "surrogateescape")).hexdigest()


def rowcount(result: Result[Any]) -> int:
    """Session.execute is typed as returning a Result; for DML it is a CursorResult."""
    return cast(CursorResult[Any], result).rowcount


def count_up_to(stmt: Select[Any]) -> Select[Any]:
    """count(*) of `stmt`'s rows, reading at most `:at_most` of them: a rate limit only needs
    to know whether its limit is reached, and a busy sender's history must not cost more."""
    return select(func.count()).select_from(stmt.limit(bindparam("at_most")).subquery())
