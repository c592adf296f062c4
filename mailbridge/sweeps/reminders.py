"""`remind` and `escalate` rules: a mail once per quiet spell, optionally reassigning the ticket."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from mailbridge import assignment, lifecycle, ownership
from mailbridge.storage import repo
from mailbridge.sweeps.common import Change, Run, span

if TYPE_CHECKING:
    from mailbridge.config import Rule
    from mailbridge.storage import Session
    from mailbridge.storage.models import Ticket

log = logging.getLogger("mailbridge.sweeps")


def mail_rule(
    run: Run, session: Session, ticket: Ticket, rule: Rule, at: datetime, dry_run: bool
) -> Change | None:
    """`remind` / `escalate`: once per quiet spell, and without touching the idle time.

    The spell is the time since the ticket's last message or status change
    (`last_activity_at`); an event of this rule inside it means it already fired. Neither the
    event nor the mail moves `last_activity_at`, so later rules still count from the spell's
    start (remind at 5d, resolve at 7d)."""
    actor = f"rule:{rule.name}"
    spell = ticket.last_activity_at
    if any(
        e.kind == rule.then and e.actor == actor and e.at >= spell
        for e in repo.ticket_events(session, ticket.number)
    ):
        return None
    idle = span(rule.idle_for)
    recipients = None
    detail = f"idle for {idle}"
    if rule.reassign:
        done = "reassign" if dry_run else _reassign(run, session, ticket, rule, at)
        detail += f"; {done}"
    if rule.then == "escalate":
        recipients = _escalation_recipients(run, ticket, rule)
        detail += f"; to {', '.join(recipients) or 'nobody'}"
    change = Change(ticket.number, ticket.status, ticket.status, rule.name, rule.then, detail)
    if dry_run:
        return change
    record = lifecycle.Record(at, rule.then, actor, ticket.status, ticket.status, detail)
    repo.add_events(session, ticket.number, [record], None)
    if run.outbound is not None:
        values: dict[str, object] = {"rule": rule.name, "idle": idle}
        run.outbound.rule_mail(session, ticket, rule.then, values, at, rule.template, recipients)
    log.info("%s", change.describe())
    return change


def _reassign(run: Run, session: Session, ticket: Ticket, rule: Rule, at: datetime) -> str:
    """Unown the ticket and let its queue's strategy pick again, never the previous owner."""
    previous, queue = ticket.owner, ticket.queue
    assigning = run.config.assigning(queue)
    members = [m for m in assigning.members if m != previous]
    choice = assignment.choose(
        assigning.strategy,
        members,
        take_turn=lambda: repo.take_turn(session, queue),
        open_counts=lambda: repo.open_counts(session, members),
        last_owner=lambda: None,  # sticky would give it straight back
    )
    what = f"reassigned {previous or 'none'} -> {choice.owner or 'none'} ({choice.detail})"
    # the choice is one of the queue's members, each an agent (checked when the config loaded)
    ownership.set_owner(session, ticket, choice.owner, f"rule:{rule.name}", at, detail=what)
    return what


def _escalation_recipients(run: Run, ticket: Ticket, rule: Rule) -> list[str]:
    found: list[str] = []
    for entry in rule.to:
        if entry == "owner":
            found += [ticket.owner] if ticket.owner else []
        elif entry == "queue":
            found += run.outbound.queue_notify_addresses(ticket) if run.outbound else []
        else:
            found.append(entry)
    return list(dict.fromkeys(a.lower() for a in found))
