"""Thread keys: what in a mail can tie it to an existing ticket (SPEC section 2).

PURE. Ingest asks storage about the keys in this order, first match wins: In-Reply-To, References
(newest first), Thread-Index, a token in a recipient address, a subject tag.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from mailbridge.parse import ParsedMessage


@dataclass(frozen=True, slots=True)
class ThreadKeys:
    message_ids: tuple[str, ...]  # In-Reply-To, then References newest first
    thread_index: str | None
    tokens: tuple[str, ...]
    tag_number: int | None


class Tagger:
    """The subject tag, e.g. `[#{number}]`: format it, find it, strip it."""

    def __init__(self, template: str = "[#{number}]") -> None:
        self.template = template
        before, _, after = template.partition("{number}")
        self._pattern = re.compile(re.escape(before) + r"\s*(\d{1,12})\s*" + re.escape(after))

    def format(self, number: int) -> str:
        return self.template.replace("{number}", str(number))

    def find(self, subject: str) -> int | None:
        match = self._pattern.search(subject)
        return int(match.group(1)) if match else None

    def strip(self, subject: str) -> str:
        return re.sub(r"\s{2,}", " ", self._pattern.sub("", subject)).strip()

    def tagged(self, subject: str, number: int) -> str:
        if self.find(subject) == number:
            return subject
        return f"{self.strip(subject)} {self.format(number)}".strip()


class Tokens:
    """Plus-address tokens: `support+<token>@example.com` for a configured `support@example.com`."""

    def __init__(self, support_addresses: Iterable[str], separator: str = "+") -> None:
        self.separator = separator
        self.ordered = list(dict.fromkeys(a.lower() for a in support_addresses))
        self.support = set(self.ordered)
        self._pattern = re.compile(r"^([^@]+?)" + re.escape(separator) + r"([a-z2-7]{8,40})@(.+)$")

    def address(self, token: str, base: str | None = None) -> str:
        """The ticket's token address on `base` (its queue's from address), else on the first
        configured address."""
        base = (base or (self.ordered[0] if self.ordered else "support@localhost")).lower()
        local, _, domain = base.partition("@")
        return f"{local}{self.separator}{token}@{domain}"

    def token_of(self, address: str) -> str | None:
        match = self._pattern.match(address.strip().lower())
        if match and f"{match.group(1)}@{match.group(3)}" in self.support:
            return match.group(2)
        return None

    def is_ours(self, address: str) -> bool:
        address = address.strip().lower()
        return address in self.support or self.token_of(address) is not None


class Addressing:
    """How mail finds its ticket by address and subject: the plus-token addresses and the subject
    tag. Built once from the config and shared by every component that reads or writes them."""

    def __init__(
        self,
        support_addresses: Iterable[str],
        separator: str = "+",
        subject_tag: str = "[#{number}]",
    ) -> None:
        self.tokens = Tokens(support_addresses, separator)
        self.tagger = Tagger(subject_tag)


def thread_keys(
    msg: ParsedMessage, recipients: Iterable[str], tokens: Tokens, tagger: Tagger
) -> ThreadKeys:
    ids = list(dict.fromkeys([*msg.in_reply_to, *reversed(msg.references)]))
    if msg.message_id in ids:
        ids.remove(msg.message_id)
    found = [t for t in (tokens.token_of(r) for r in recipients) if t]
    return ThreadKeys(
        tuple(ids), msg.thread_index, tuple(dict.fromkeys(found)), tagger.find(msg.subject)
    )
