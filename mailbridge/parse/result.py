"""PURE  What `mailbridge.parse` returns, and the rule every field decoder follows.

Standard library only. `guard` runs one field's decoder: hostile input may break that
field, never the message; the failure is recorded as a `FieldError:<field>:<exception>`
defect.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from types import MappingProxyType
from typing import Any, TypeVar

__all__ = ["Address", "Attachment", "ParsedMessage", "guard"]


@dataclass(frozen=True, slots=True)
class Address:
    name: str  # display name, RFC 2047 decoded; '' if none
    addr: str  # as written, stripped; encoded-words are never decoded here


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str  # sanitised; derived from the part's type when the mail gives none
    content_type: str
    size: int  # decoded payload bytes


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    thread_index: str | None
    subject: str
    from_: Address | None
    sender: Address | None
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    date: datetime | None
    content_type: str
    report_type: str | None
    headers: Mapping[str, tuple[str, ...]]
    body_text: str
    attachments: tuple[Attachment, ...]
    defects: tuple[str, ...]

    def __reduce__(self) -> tuple[Any, ...]:
        # parse workers send results back pickled, and a mappingproxy does not pickle
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["headers"] = dict(self.headers)
        return (_unpickle, (values,))


def _unpickle(values: dict[str, Any]) -> ParsedMessage:
    values["headers"] = MappingProxyType(values["headers"])
    return ParsedMessage(**values)


T = TypeVar("T")


def guard(func: Callable[[], T], default: T, defects: list[str], field: str) -> T:
    """One field's decoder may fail on hostile input; the message survives without it."""
    try:
        return func()
    except Exception as exc:
        defects.append(f"FieldError:{field}:{type(exc).__name__}")
        return default
