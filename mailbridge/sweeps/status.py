"""Sweeps that change a ticket's status: waking postponed tickets, and the `[[rules]]` that
resolve, close or purge idle ones (remind and escalate are `reminders`)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from mailbridge import lifecycle
from mailbridge.errors import IllegalTransition
from mailbridge.lifecycle import Kind, Status
from mailbridge.storage import repo
from mailbridge.sweeps.common import PURGED, WAKE, Change, Run, narrowed, span
from mailbridge.sweeps.reminders import mail_rule

if TYPE_CHECKING:
    from mailbridge.config import Rule
    from mailbridge.storage import Session
    from mailbridge.storage.models import Ticket

log = logging.getLogger("mailbridge.sweeps")

_KINDS = {"resolved": Kind.RESOLVE, "closed": Kind.CLOSE}


def wake(run: Run, number: int, at: datetime, dry_run: bool) -> Change | None:
    with run.store.unit() as session:
        ticket = repo.lock_ticket_if(session, number, Status.POSTPONED)
        if ticket is None or ticket.postponed_until is None or ticket.postponed_until > at:
            return None  # another run woke it, or the agent moved the date meanwhile
        event = lifecycle.Event(Kind.WAKE, f"rule:{WAKE}")
        return _transition(session, ticket, event, WAKE, at, dry_run)


def apply_rule(run: Run, rule: Rule, number: int, at: datetime, dry_run: bool) -> Change | None:
    with run.store.unit() as session:
        ticket = repo.lock_ticket(session, number)
        # re-checked under the lock: a mail may have arrived since the candidates were read
        if (
            ticket is None
            or ticket.status not in rule.statuses
            or ticket.last_activity_at > at - rule.idle_for
            or not narrowed(rule, ticket, repo.tags_of(session, [number]).get(number, []))
        ):
            return None
        if rule.then == "purge":
            return _purge(session, ticket, rule, at, dry_run)
        if rule.then in ("remind", "escalate"):
            return mail_rule(run, session, ticket, rule, at, dry_run)
        event = lifecycle.Event(
            _KINDS[rule.then], f"rule:{rule.name}", detail=f"idle for {span(rule.idle_for)}"
        )
        change = _transition(session, ticket, event, rule.name, at, dry_run)
        if change is not None and rule.notify and not dry_run:
            _notify(run, session, ticket, rule, at)
        return change


def _transition(
    session: Session,
    ticket: Ticket,
    event: lifecycle.Event,
    rule: str,
    at: datetime,
    dry_run: bool,
) -> Change | None:
    try:
        transition = lifecycle.apply(repo.ticket_state(ticket), event, at)
    except IllegalTransition as exc:
        # config validation keeps rules to legal transitions; a row changed by hand might not
        log.warning("ticket #%d: rule %s skipped: %s", ticket.number, rule, exc)
        return None
    if not transition.changed:
        return None
    change = Change(ticket.number, ticket.status, transition.state.status.value, rule)
    if not dry_run:
        repo.save_transition(session, ticket, transition, at)
        log.info("%s", change.describe())
    return change


def _purge(session: Session, ticket: Ticket, rule: Rule, at: datetime, dry_run: bool) -> Change:
    change = Change(ticket.number, ticket.status, PURGED, rule.name)
    if not dry_run:
        removed = repo.purge_ticket(session, ticket.number, at)
        log.info("%s; %d messages removed, tombstones kept", change.describe(), removed)
    return change


def _notify(run: Run, session: Session, ticket: Ticket, rule: Rule, at: datetime) -> None:
    """Queue the rule's notice in the transition's own transaction: exactly once with it."""
    if run.outbound is None:
        log.debug("rule %s: notify is set but there is no outbound to send it", rule.name)
        return
    if rule.template is not None:
        run.outbound.rule_notice(session, ticket, rule.name, at, template=rule.template)
    else:
        run.outbound.rule_notice(session, ticket, rule.name, at)
