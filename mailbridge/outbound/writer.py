"""Gives claimed outbox rows their bytes, written from their `spec` (see `mailbridge.outbound`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from mailbridge.fingerprint import content_hash, dedup_key
from mailbridge.outbound.compose import Pending, Written, attachments_of, size_of, write
from mailbridge.storage import repo
from mailbridge.storage.models import Attachment

if TYPE_CHECKING:
    from mailbridge.outbound.claim import Job
    from mailbridge.storage import Session, Store
    from mailbridge.storage.models import Outbox

log = logging.getLogger("mailbridge.sender")

_BODY_FIELDS = (b"content-type:", b"content-transfer-encoding:", b"mime-version:")


@dataclass(frozen=True, slots=True)
class Unwritten:
    """A claimed row still without bytes, and what writing them needs from the database."""

    pending: Pending | None  # None: the spec cannot be read
    message_pk: int | None
    known: list[str]  # the ticket's Message-IDs when the mail was queued (its References)
    attach_raw: bytes | None  # the stored mail whose attachments go along


def unwritten(session: Session, rows: Sequence[Outbox]) -> dict[int, Unwritten]:
    """For claimed rows without bytes: their spec, References and attachment source."""
    specs = repo.outbox_specs(session, [r.id for r in rows if r.raw is None])
    found: dict[int, Unwritten] = {}
    for row in rows:
        if row.id not in specs:
            continue
        try:
            pending: Pending | None = Pending.from_json(specs[row.id])
        except (ValueError, TypeError, KeyError):
            log.exception("outbox #%s: unreadable spec", row.id)
            pending = None
        known: list[str] = []
        if row.message_pk is not None and row.ticket_number is not None:
            known = repo.message_ids_before(session, row.ticket_number, row.message_pk)
        found[row.id] = Unwritten(pending, row.message_pk, known, None)
    sources = repo.raw_of_messages(
        session,
        [u.pending.attach_pk for u in found.values() if u.pending and u.pending.attach_pk],
    )
    return {
        pk: replace(u, attach_raw=sources.get(u.pending.attach_pk))
        if u.pending and u.pending.attach_pk
        else u
        for pk, u in found.items()
    }


def write_all(store: Store, jobs: list[Job], unwritten: dict[int, Unwritten]) -> list[Job]:
    """Write the mails of `unwritten` (no transaction open), then store them in one."""
    written: dict[int, Written | None] = {}
    for pk, u in unwritten.items():
        parts = attachments_of(u.attach_raw) if u.attach_raw else []
        written[pk] = write(u.pending, u.known, parts) if u.pending else None
    saved = []
    for pk, w in written.items():
        u = unwritten[pk]
        if w is None or u.pending is None:
            continue
        chash = content_hash(w.raw)
        copy_raw, body = w.raw, w.body
        if u.pending.kind == "notify" and u.attach_raw is not None:
            # the customer's mail, text and attachments, is on the ticket already
            copy_raw, body = reference_copy(w, u.pending.in_reply_to)
        copy = {
            "dedup_key": dedup_key(u.pending.message_id, chash),
            "content_hash": chash,
            "size": len(copy_raw),
            "subject": w.subject,
            "body_text": body,
        }
        files = [
            Attachment(filename=p.filename, content_type=p.content_type, size=size_of(p))
            for p in w.attachments
        ]
        saved.append(repo.Written(pk, w.raw, u.message_pk, copy, files, copy_raw))
    with store.unit() as session:
        repo.save_written(session, saved)
    return [
        replace(job, raw=w.raw if (w := written[job.id]) else None) if job.id in written else job
        for job in jobs
    ]


def reference_copy(written: Written, original: str | None) -> tuple[bytes, str]:
    """What the ticket keeps of a notification: its header block as sent, byte for byte, and
    instead of the customer's text and attachments (stored once, with the customer's mail) a
    line saying where they are. The bytes sent are kept on the outbox row until delivery."""
    head, _, _ = written.raw.partition(b"\r\n\r\n")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    kept = [f for f in fields if not f.lower().startswith(_BODY_FIELDS)]
    names = ", ".join(p.filename for p in written.attachments)
    text = (
        f"This notification carried the text of message <{original}>"
        + (f" and its attachments ({names})" if names else "")
        + ", stored with that message on this ticket; they are not stored again here.\n"
    )
    mime = [
        b"MIME-Version: 1.0",
        b'Content-Type: text/plain; charset="utf-8"',
        b"Content-Transfer-Encoding: 8bit",
    ]
    body = text.encode("utf-8", "replace").replace(b"\n", b"\r\n")
    return b"\r\n".join([*kept, *mime]) + b"\r\n\r\n" + body, text
