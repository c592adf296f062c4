"""Named rules that decide what kind of mail this is, before threading decides where it goes.

PURE. Each rule is a small object with a name, a predicate (`check`) and what its hit means: the
`action` ingest takes and whether the mail may still be acknowledged. Every rule runs; all hits
are kept on the verdict (Mailman's rule_hits), the first hit whose action is not `TICKET` decides,
and ingest writes the hits into the ticket's events, so `ticket show` explains the decision.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from mailbridge.authres import agent_authority as header_authority
from mailbridge.envelope import Envelope, Source
from mailbridge.lifecycle import Note
from mailbridge.parse import ParsedMessage

MAIL = "mail"
# a deciding rule's name is the kind of the event it records
AUTO_REPLY = Note.AUTO_REPLY
BOUNCE = Note.BOUNCE
LOOP = Note.LOOP
BLOCKED = Note.BLOCKED
BULK = "bulk"  # never decides, so records no event of its own


class Action(StrEnum):
    """What ingest does with mail a rule hit."""

    # thread it or open a ticket, as any mail
    TICKET = "ticket"
    # never a ticket of its own: threaded, it is recorded on its ticket with the status unchanged
    # (an event named for the rule); unthreaded, it is held in quarantine as ignored
    NOT_A_TICKET = "not-a-ticket"
    # threaded: as NOT_A_TICKET; unthreaded: a new ticket, marked spam at once
    SPAM = "spam"


@dataclass(frozen=True, slots=True)
class Policy:
    """What classification needs from the config."""

    identity: str = "mailbridge"  # our X-Loop value
    agent_addresses: frozenset[str] = frozenset()
    agent_domains: frozenset[str] = frozenset()
    trusted_authserv_ids: frozenset[str] = frozenset()
    blocked: frozenset[str] = frozenset()  # addresses, or '@domain'


@dataclass(frozen=True, slots=True)
class Hit:
    """One rule that matched a mail, and why."""

    name: str  # the rule's name, e.g. "auto-reply"; the event kind when it decides
    reason: str  # e.g. "auto-submitted: auto-replied"
    action: Action
    acknowledge: bool


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str  # the deciding rule's name (auto-reply | bounce | loop | blocked), else "mail"
    rule: str  # why, e.g. "auto-submitted: auto-replied"
    action: Action = Action.TICKET
    acknowledge: bool = True  # no hit forbids an automatic acknowledgement
    agent: str | None = None  # the agent's address, when the mail carries agent authority
    claimed_agent: bool = False  # From is an agent's, but nothing authenticates it
    hits: tuple[Hit, ...] = ()  # every rule that matched, in rule order

    def with_hits(self, text: str, *told: str) -> str:
        """`text`, then every hit that neither it nor `told` already tells: how hits reach the
        ticket's events and messages, so `ticket show` explains the decision."""
        rest = [h.reason for h in self.hits if not any(h.reason in t for t in (text, *told))]
        return f"{text}; rule hits: {', '.join(rest)}" if rest else text


def _first(msg: ParsedMessage, name: str) -> str:
    values = msg.headers.get(name, ())
    return values[0].strip() if values else ""


class Rule:
    """A named predicate and what its hit means. Subclasses set the class attributes."""

    name: str
    action: Action = Action.TICKET
    acknowledge: bool = False  # whether mail this rule hits may still be acknowledged
    agents: bool = True  # whether it also judges mail with agent authority

    def check(self, msg: ParsedMessage, env: Envelope, policy: Policy) -> str | None:
        """Why the rule matches this mail, or None."""
        raise NotImplementedError

    def hit(self, reason: str) -> Hit:
        return Hit(self.name, reason, self.action, self.acknowledge)


class OwnLoop(Rule):
    name = LOOP
    action = Action.NOT_A_TICKET

    def check(self, msg: ParsedMessage, env: Envelope, policy: Policy) -> str | None:
        for value in msg.headers.get("x-loop", ()):
            if value.strip().lower() == policy.identity.lower():
                return f"own-loop: X-Loop {value.strip()}"
        if msg.headers.get("x-mailbridge-ticket") and _first(msg, "auto-submitted").lower() not in (
            "",
            "no",
        ):
            return "own-loop: our Auto-Submitted mail came back"
        return None


class DeliveryStatusReport(Rule):
    name = BOUNCE
    action = Action.NOT_A_TICKET

    def check(self, msg: ParsedMessage, env: Envelope, policy: Policy) -> str | None:
        if msg.content_type == "multipart/report" and msg.report_type in (
            "delivery-status",
            "delivery-notification",
        ):
            return "bounce: multipart/report delivery-status"
        if env.mail_from == "":
            return "bounce: null envelope sender"
        sender = msg.from_.addr.lower() if msg.from_ else ""
        local = sender.split("@", 1)[0]
        if local in ("mailer-daemon", "postmaster") and (
            msg.headers.get("x-failed-recipients")
            or msg.content_type.startswith("multipart/report")
        ):
            return f"bounce: from {local}"
        return None


class AutoSubmitted(Rule):
    name = AUTO_REPLY
    action = Action.NOT_A_TICKET
    _SUBJECT = re.compile(
        r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|out of (the )?office|abwesenheitsnotiz|"
        r"autosvar|r[ée]ponse automatique)\b",
        re.IGNORECASE,
    )

    def check(self, msg: ParsedMessage, env: Envelope, policy: Policy) -> str | None:
        auto = _first(msg, "auto-submitted").lower()
        if auto and auto != "no":
            return f"auto-submitted: {auto.split(';')[0].strip()}"
        for name in ("x-autoreply", "x-autorespond"):
            if msg.headers.get(name):
                return f"{name}: {_first(msg, name) or 'present'}"
        if _first(msg, "precedence").lower() == "auto_reply":
            return "precedence: auto_reply"
        if msg.headers.get("x-ms-exchange-generated-message-source"):
            return "x-ms-exchange-generated-message-source: automatic Exchange mail"
        if self._SUBJECT.match(msg.subject) and _first(msg, "x-auto-response-suppress"):
            return "auto-reply subject with X-Auto-Response-Suppress"
        return None


class BlockedSender(Rule):
    name = BLOCKED
    action = Action.SPAM
    agents = False  # an agent's own mail is never the spam of a blocked sender

    def check(self, msg: ParsedMessage, env: Envelope, policy: Policy) -> str | None:
        # SpamAssassin's verdict stands on its own, with or without a blocked list
        if _first(msg, "x-spam-flag").lower() == "yes":
            return "spam: X-Spam-Flag yes"
        sender = msg.from_.addr.lower() if msg.from_ else ""
        if not sender or not policy.blocked:
            return None
        domain = "@" + sender.rsplit("@", 1)[-1]
        if sender in policy.blocked or domain in policy.blocked:
            return f"blocked-sender: {sender}"
        return None


class BulkMail(Rule):
    """List and bulk mail: a ticket like any other, but never acknowledged."""

    name = BULK

    def check(self, msg: ParsedMessage, env: Envelope, policy: Policy) -> str | None:
        precedence = _first(msg, "precedence").lower()
        if precedence in ("bulk", "junk", "list") or msg.headers.get("list-id"):
            return f"bulk ({precedence or 'list-id'})"
        return None


RULES: Sequence[Rule] = (
    OwnLoop(),
    DeliveryStatusReport(),
    AutoSubmitted(),
    BlockedSender(),
    BulkMail(),
)


def is_agent_address(address: str, policy: Policy) -> bool:
    address = address.lower()
    return address in policy.agent_addresses or address.rsplit("@", 1)[-1] in policy.agent_domains


def agent_authority(
    msg: ParsedMessage, env: Envelope, source: Source, policy: Policy
) -> tuple[str | None, str, bool]:
    """(agent address, how it was authenticated or why not, whether From merely claims an agent)."""
    sender = msg.from_.addr.lower() if msg.from_ else ""
    if not sender or not is_agent_address(sender, policy):
        return None, "", False
    if source.agent_authority:
        return sender, f"sent folder {source.name}", False
    login = (env.auth_user or "").lower()
    # an SMTP login vouches only for its own address: bob may not send as alice
    if login and (login == sender or ("@" not in login and login == sender.split("@", 1)[0])):
        return sender, f"smtp-auth {env.auth_user}", False
    if not env.trusted_peer:
        # a header any client could have written: the listener's peer is not our MTA
        return None, f"authentication-results ignored: {env.peer} is not a trusted peer", True
    if "HeaderFoldingRepaired" in msg.defects:
        # we read headers the MTA took for body lines (or `Name :`, which it does not match),
        # so it cannot have stripped a forged Authentication-Results among them
        return None, "authentication-results ignored: the header section was malformed", True
    found = header_authority(
        msg.headers.get("authentication-results", ()),
        policy.trusted_authserv_ids,
        sender.rsplit("@", 1)[-1],
    )
    if found.granted:
        return sender, found.reason, False
    return None, found.reason, True


def classify(msg: ParsedMessage, env: Envelope, source: Source, policy: Policy) -> Verdict:
    agent, authority, claimed = agent_authority(msg, env, source, policy)
    hits = tuple(
        rule.hit(why)
        for rule in RULES
        if (rule.agents or not agent) and (why := rule.check(msg, env, policy))
    )
    acknowledge = all(h.acknowledge for h in hits)
    decisive = next((h for h in hits if h.action is not Action.TICKET), None)
    if decisive is not None:
        return Verdict(
            decisive.name, decisive.reason, decisive.action, acknowledge, None, claimed, hits
        )
    if agent:
        return Verdict(MAIL, f"agent: {authority}", acknowledge=acknowledge, agent=agent, hits=hits)
    reason = "customer mail"
    if claimed:
        reason = "customer mail: agent From without authentication"
        if authority:
            reason += f" ({authority})"
    elif bulk := next((h for h in hits if h.name == BULK), None):
        reason = f"customer mail: {bulk.reason}, not acknowledged"
    return Verdict(MAIL, reason, acknowledge=acknowledge, claimed_agent=claimed, hits=hits)
