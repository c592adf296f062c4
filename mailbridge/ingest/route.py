"""Where a new ticket goes (SPEC 7): the facts of the mail handed to the router's filters, and the
owner its queue's strategy picks."""

from __future__ import annotations

import email.policy
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from email.parser import BytesHeaderParser
from typing import TYPE_CHECKING

from mailbridge import assignment, routing
from mailbridge.ingest.mail import Prepared, sender
from mailbridge.parse import CLASSIFY_HEADERS, decode_header_text
from mailbridge.storage import repo

if TYPE_CHECKING:
    from mailbridge.config import Settings
    from mailbridge.storage import Session

# compat32 hands back the raw values, which decode_header_text decodes like the parser does;
# the default policy's header objects cost several times more
_HEADERS = BytesHeaderParser(policy=email.policy.compat32)


class Routes:
    """The router and the queues' assignment settings of one config."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.router = routing.Router(
            settings.queue_list, settings.filters, settings.tickets.plus_separator
        )
        extra = sorted(self.router.header_names - CLASSIFY_HEADERS)
        self._extra_headers = (
            re.compile(
                b"^(?:" + b"|".join(re.escape(n.encode()) for n in extra) + b"):", re.I | re.M
            )
            if extra
            else None
        )

    def route(self, p: Prepared) -> routing.Route:
        msg = p.parsed
        assert msg is not None
        headers: Mapping[str, Sequence[str]] = msg.headers
        if self._extra_headers is not None and self._extra_headers.search(
            block := _header_block(p.raw)
        ):
            # a filter on a header the parser does not keep, and the mail has it: read the
            # header block once more
            wanted = self.router.header_names - CLASSIFY_HEADERS
            found = _HEADERS.parsebytes(block)
            extra = {n: tuple(decode_header_text(v) for v in found.get_all(n, ())) for n in wanted}
            headers = {**headers, **extra}
        imap = p.source.name if p.source.kind in ("imap", "imap-sent") else None
        return self.router.route(
            routing.Facts(
                sender=sender(p),
                envelope_to=tuple(r.lower() for r in p.envelope.rcpt_tos),
                delivered_to=tuple(
                    v.strip().strip("<>").lower()
                    for name in ("delivered-to", "x-original-to")
                    for v in headers.get(name, ())
                ),
                to=tuple(a.addr.lower() for a in msg.to),
                cc=tuple(a.addr.lower() for a in msg.cc),
                subject=msg.subject,
                body=msg.body_text if self.router.needs_body else "",
                headers=headers,
                imap_account=imap,
            )
        )

    def assign(
        self, session: Session, route: routing.Route, customer: str, now: datetime
    ) -> assignment.Assignment:
        queue = route.queue
        return assignment.choose(
            self.settings.queue(queue).assign,
            self.settings.queue_members(queue),
            take_turn=lambda: repo.take_turn(session, queue),
            open_counts=lambda: repo.open_counts(session, self.settings.queue_members(queue)),
            last_owner=lambda: repo.last_owner(
                session, customer, queue, now - assignment.STICKY_WINDOW
            ),
            filter_owner=route.owner,
            filter_name=route.owner_filter,
        )


def _header_block(raw: bytes) -> bytes:
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return raw[: min(ends)] if ends else raw
