"""Queue, owner, tags and priority of an existing ticket: the changes agents make by mail
(`#take #assign #unassign #queue #tag #untag #priority`) and the CLI makes (`ticket assign|queue|
tag|priority`), checked the same way for both (SPEC 7).

Each change writes an event without a status change (`queue`, `assign`, `tag`, `priority`) with
the actor and a detail; a refused change raises `Refused` and changes nothing.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING

from mailbridge import lifecycle
from mailbridge.lifecycle import Note
from mailbridge.routing import PRIORITIES
from mailbridge.storage import repo

if TYPE_CHECKING:
    from mailbridge.config import Settings
    from mailbridge.storage import Session
    from mailbridge.storage.models import Ticket

COMMANDS = ("take", "assign", "unassign", "queue", "tag", "untag", "priority")
_TAG = re.compile(r"[a-z0-9][a-z0-9_-]*")


class Refused(Exception):
    """The change is not allowed; the message says why, for the agent's notice or the CLI."""


def _record(
    session: Session,
    ticket: Ticket,
    kind: str,
    actor: str,
    detail: str,
    now: datetime,
    message_pk: int | None,
) -> None:
    record = lifecycle.Record(now, kind, actor, ticket.status, ticket.status, detail)
    repo.add_events(session, ticket.number, [record], message_pk)
    ticket.updated_at = now


def find_agent(settings: Settings, who: str) -> str:
    """An agent by address, or by the local part of a listed agent address."""
    who = who.strip().lower()
    if "@" in who:
        if settings.is_agent(who):
            return who
        raise Refused(f"{who} is not an agent")
    listed = dict.fromkeys(
        (*settings.agents.addresses, *(m for q in settings.queue_list for m in q.members))
    )
    found = [a for a in listed if a.partition("@")[0] == who]
    if len(found) == 1:
        return found[0]
    if not found:
        raise Refused(f"no agent {who!r}")
    raise Refused(f"{who!r} names several agents: {', '.join(found)}")


def assign(
    session: Session,
    settings: Settings,
    ticket: Ticket,
    owner: str | None,
    actor: str,
    now: datetime,
    message_pk: int | None = None,
    detail: str | None = None,
) -> None:
    if owner is not None:
        owner = find_agent(settings, owner)
        members = settings.queue(ticket.queue).members
        if members and owner not in members:
            raise Refused(f"{owner} is not a member of queue {ticket.queue}")
    set_owner(session, ticket, owner, actor, now, message_pk, detail)


def set_owner(
    session: Session,
    ticket: Ticket,
    owner: str | None,
    actor: str,
    now: datetime,
    message_pk: int | None = None,
    detail: str | None = None,
) -> None:
    """Give the ticket to `owner` (None: nobody), already known to be allowed to own it."""
    if owner == ticket.owner:
        return
    before = ticket.owner or "none"
    ticket.owner = owner
    _record(
        session,
        ticket,
        Note.ASSIGN,
        actor,
        detail or f"{before} -> {owner or 'none'} by {actor}",
        now,
        message_pk,
    )


def move(
    session: Session,
    settings: Settings,
    ticket: Ticket,
    queue: str,
    actor: str,
    now: datetime,
    message_pk: int | None = None,
) -> None:
    names = [q.name for q in settings.queue_list]
    queue = queue.strip().lower()
    if queue not in names:
        raise Refused(f"no queue {queue!r} (one of: {', '.join(names)})")
    if queue == ticket.queue:
        return
    before, ticket.queue = ticket.queue, queue
    _record(session, ticket, Note.QUEUE, actor, f"{before} -> {queue} by {actor}", now, message_pk)


def tag(
    session: Session,
    ticket: Ticket,
    words: list[str],
    actor: str,
    now: datetime,
    *,
    remove: bool = False,
    message_pk: int | None = None,
) -> None:
    tags = list(dict.fromkeys(w.strip().lower() for w in words if w.strip()))
    if not tags:
        raise Refused("name at least one tag")
    bad = [t for t in tags if not _TAG.fullmatch(t)]
    if bad:
        raise Refused(f"invalid tag {bad[0]!r} (lowercase words: a-z, 0-9, _ and -)")
    if remove:
        repo.remove_tags(session, ticket.number, tags)
    else:
        repo.add_tags(session, ticket.number, tags)
    sign = "-" if remove else "+"
    _record(
        session,
        ticket,
        Note.TAG,
        actor,
        " ".join(sign + t for t in tags) + f" by {actor}",
        now,
        message_pk,
    )


def prioritise(
    session: Session,
    ticket: Ticket,
    priority: str,
    actor: str,
    now: datetime,
    message_pk: int | None = None,
) -> None:
    priority = priority.strip().lower()
    if priority not in PRIORITIES:
        raise Refused(f"no priority {priority!r} (one of: {', '.join(PRIORITIES)})")
    if priority == ticket.priority:
        return
    before, ticket.priority = ticket.priority, priority
    _record(
        session, ticket, Note.PRIORITY, actor, f"{before} -> {priority} by {actor}", now, message_pk
    )


def command(
    session: Session,
    settings: Settings,
    ticket: Ticket,
    name: str,
    argument: str,
    agent: str,
    now: datetime,
    message_pk: int | None,
) -> None:
    """One agent mail command; raises Refused with a reason for the agent's notice."""
    words = argument.split()
    try:
        if name == "take":
            assign(session, settings, ticket, agent, agent, now, message_pk)
        elif name == "assign":
            if len(words) != 1:
                raise Refused("#assign takes one agent address or local part")
            assign(session, settings, ticket, words[0], agent, now, message_pk)
        elif name == "unassign":
            assign(session, settings, ticket, None, agent, now, message_pk)
        elif name == "queue":
            if len(words) != 1:
                raise Refused("#queue takes one queue name")
            move(session, settings, ticket, words[0], agent, now, message_pk)
        elif name in ("tag", "untag"):
            tag(session, ticket, words, agent, now, remove=name == "untag", message_pk=message_pk)
        elif name == "priority":
            if len(words) != 1:
                raise Refused(f"#priority takes one of: {', '.join(PRIORITIES)}")
            prioritise(session, ticket, words[0], agent, now, message_pk)
    except Refused as exc:
        raise Refused(f"#{name}: {exc}") from None
