"""Agent mail: a reply relayed to the customer, a note, commands (`#resolve`, `#assign` ...)
carried out or refused with a notice; or, unthreaded, a new ticket for whom the agent wrote to."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from mailbridge import agent_commands, lifecycle, ownership
from mailbridge.envelope import Outcome
from mailbridge.errors import IllegalTransition
from mailbridge.ingest.mail import Prepared
from mailbridge.lifecycle import Kind, Note, Status
from mailbridge.storage import repo

if TYPE_CHECKING:
    from mailbridge.ingest.match import Decision
    from mailbridge.ingest.tickets import Tickets
    from mailbridge.outbound.decide import Outbound
    from mailbridge.rules import Verdict
    from mailbridge.storage import Session
    from mailbridge.storage.models import Ticket

# the commands that are lifecycle events (postpone, which takes a time, aside)
_EVENTS = {"resolve": Kind.RESOLVE, "close": Kind.CLOSE, "spam": Kind.SPAM, "delete": Kind.DELETE}


class AgentMail:
    def __init__(self, tickets: Tickets, outbound: Outbound | None) -> None:
        self.tickets = tickets
        self.settings = tickets.settings
        self.outbound = outbound

    def handle(
        self, session: Session, p: Prepared, verdict: Verdict, found: Decision, now: datetime
    ) -> Outcome:
        msg = p.parsed
        assert msg is not None and verdict.agent
        agent = verdict.agent
        ticket = found.ticket
        if ticket is None:
            # an agent writing afresh: the ticket's customer is whom they wrote to, if anyone
            ticket, message, routed = self.tickets.create(
                session,
                p,
                verdict,
                verdict.with_hits(f"agent mail, {found.rule}"),
                now,
                None,
                direction="outbound",
                author_kind="agent",
            )
            return Outcome(
                "created", ticket.number, f"{verdict.rule}; {found.rule}; {routed}", message.id
            )

        parsed_cmds = agent_commands.split_commands(msg.body_text)
        if self.outbound:
            parsed_cmds = agent_commands.Parsed(
                parsed_cmds.commands,
                self.outbound.strip_footer(parsed_cmds.text),
                parsed_cmds.unknown,
            )
        is_note = any(c.name == "note" for c in parsed_cmds.commands)
        has_text = bool(parsed_cmds.text.strip())
        recipients = {
            r.lower() for r in (*p.envelope.rcpt_tos, *(a.addr for a in (*msg.to, *msg.cc)))
        }
        relay = (
            has_text
            and not is_note
            and ticket.customer not in recipients
            and not p.source.agent_authority
        )
        direction = "inbound" if relay or is_note else "outbound"
        why = verdict.with_hits(f"{found.rule}; {verdict.rule}")
        message = self.tickets.store_message(session, p, ticket, direction, "agent", why, now)
        if ticket.customer in recipients and not is_note:
            # written to the customer directly: whoever else it went to is in the conversation
            self.tickets.add_participants(session, p, ticket, now, message.id)
        refusals: list[str] = [f"unknown command {u}" for u in parsed_cmds.unknown]
        if has_text and not is_note:
            self._apply_or_refuse(
                session, ticket, lifecycle.Event(Kind.AGENT_REPLY, agent), now, message.id, refusals
            )
            self._owner_on_reply(session, ticket, agent, now, message.id)
        for cmd in parsed_cmds.commands:
            if cmd.name in ownership.COMMANDS:
                try:
                    ownership.command(
                        session,
                        self.settings,
                        ticket,
                        cmd.name,
                        cmd.argument,
                        agent,
                        now,
                        message.id,
                    )
                except ownership.Refused as exc:
                    refusals.append(str(exc))
                continue
            event = _command_event(cmd, agent, now, refusals)
            if event is not None:
                self._apply_or_refuse(session, ticket, event, now, message.id, refusals)
        ticket.last_activity_at = now
        if self.outbound:
            if relay and ticket.status not in (Status.SPAM, Status.DELETED):
                self.outbound.relay(session, ticket, message, msg, parsed_cmds.text, agent, now)
            if refusals:
                self.outbound.refused(session, ticket, agent, refusals, msg, now)
        summary = (
            f"{found.rule}; {verdict.rule}; {'relayed' if relay else 'recorded'} -> {ticket.status}"
        )
        if refusals:
            summary += "; refused: " + "; ".join(refusals)
        return Outcome("appended", ticket.number, summary, message.id)

    def _apply_or_refuse(
        self,
        session: Session,
        ticket: Ticket,
        event: lifecycle.Event,
        now: datetime,
        message_pk: int | None,
        refusals: list[str],
    ) -> None:
        try:
            self.tickets.transition(session, ticket, event, now, message_pk)
        except IllegalTransition as exc:
            refusals.append(
                f"#{event.kind}: {exc}" if event.kind is not Kind.AGENT_REPLY else str(exc)
            )

    def _owner_on_reply(
        self, session: Session, ticket: Ticket, agent: str, now: datetime, message_pk: int
    ) -> None:
        """`assign_on_reply`: the first agent to answer an unowned ticket becomes its owner."""
        if ticket.owner is not None or not self.settings.queue(ticket.queue).assign_on_reply:
            return
        members = self.settings.queue(ticket.queue).members
        if members and agent not in members:
            return
        ticket.owner = agent
        record = lifecycle.Record(
            now, Note.ASSIGN, agent, ticket.status, ticket.status, f"assign_on_reply -> {agent}"
        )
        repo.add_events(session, ticket.number, [record], message_pk)


def _command_event(
    cmd: agent_commands.Command, agent: str, now: datetime, refusals: list[str]
) -> lifecycle.Event | None:
    """The lifecycle event a command asks for; a #postpone it cannot read is refused."""
    if cmd.name in _EVENTS:
        return lifecycle.Event(_EVENTS[cmd.name], agent)
    if cmd.name == "postpone":
        try:
            return lifecycle.Event(
                Kind.POSTPONE, agent, until=agent_commands.postpone_until(cmd.argument, now)
            )
        except ValueError as exc:
            refusals.append(f"#postpone: {exc}")
    return None
