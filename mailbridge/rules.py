"""Named rules that decide what kind of mail this is, before threading decides where it goes.

PURE. Each rule is a small object with a name and a predicate; the first that matches gives the
verdict, and its explanation is stored with the message and in `ingest --dry-run`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mailbridge.authres import agent_authority as header_authority
from mailbridge.envelope import Envelope, Source
from mailbridge.parse import ParsedMessage

MAIL = "mail"
AUTO_REPLY = "auto-reply"
BOUNCE = "bounce"
LOOP = "loop"
BLOCKED = "blocked"


@dataclass(frozen=True, slots=True)
class Policy:
    """What classification needs from the config."""

    identity: str = "mailbridge"  # our X-Loop value
    agent_addresses: frozenset[str] = frozenset()
    agent_domains: frozenset[str] = frozenset()
    trusted_authserv_ids: frozenset[str] = frozenset()
    blocked: frozenset[str] = frozenset()  # addresses, or '@domain'
    support_addresses: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str  # mail | auto-reply | bounce | loop | blocked
    rule: str  # why, e.g. "auto-submitted: auto-replied"
    bulk: bool = False  # list/bulk mail: a ticket, but never acknowledged
    agent: str | None = None  # the agent's address, when the mail carries agent authority
    authority: str = ""  # how the agent was authenticated
    claimed_agent: bool = False  # From is an agent's, but nothing authenticates it
    hits: tuple[str, ...] = field(default=())


def _first(msg: ParsedMessage, name: str) -> str:
    values = msg.headers.get(name, ())
    return values[0].strip() if values else ""


class Rule(Protocol):
    name: str

    def check(self, msg: ParsedMessage, env: Envelope, policy: Policy) -> str | None: ...


class OwnLoop:
    name = LOOP

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


class DeliveryStatusReport:
    name = BOUNCE

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


class AutoSubmitted:
    name = AUTO_REPLY
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


class BlockedSender:
    name = BLOCKED

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


RULES: Sequence[Rule] = (OwnLoop(), DeliveryStatusReport(), AutoSubmitted(), BlockedSender())


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
    precedence = _first(msg, "precedence").lower()
    bulk = precedence in ("bulk", "junk", "list") or bool(msg.headers.get("list-id"))
    for rule in RULES:
        if agent and rule.name == BLOCKED:
            continue
        why = rule.check(msg, env, policy)
        if why:
            return Verdict(rule.name, why, bulk, None, "", claimed, (why,))
    if agent:
        return Verdict(MAIL, f"agent: {authority}", bulk, agent, authority)
    reason = "customer mail"
    if claimed:
        reason = "customer mail: agent From without authentication"
        if authority:
            reason += f" ({authority})"
    elif bulk:
        reason = f"customer mail: bulk ({precedence or 'list-id'}), not acknowledged"
    return Verdict(MAIL, reason, bulk, None, "", claimed)
