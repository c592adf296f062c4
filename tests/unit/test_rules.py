"""The classification rules, one by one: the mail that trips each, a near miss that does not, and
what its hit makes ingest do; then how hits combine into the verdict that ingest walks."""

from __future__ import annotations

import pytest

from mailbridge import rules
from mailbridge.envelope import Envelope, Source
from mailbridge.parse import ParsedMessage, parse
from mailbridge.rules import Action, Policy, classify

SMTP = Source("smtp", "127.0.0.1:25")
POLICY = Policy(
    identity="support@example.com",
    agent_addresses=frozenset({"alice@example.com"}),
    blocked=frozenset({"@spam.example", "pest@junk.example"}),
)


def mail(*headers: str, sender: str = "carol@customer.example", body: str = "Hello\n") -> bytes:
    lines = [
        f"From: {sender}",
        "To: support@example.com",
        "Subject: Printer on fire",
        "Message-ID: <1@customer.example>",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def msg(*headers: str, sender: str = "carol@customer.example") -> ParsedMessage:
    return parse(mail(*headers, sender=sender))


def hits(raw: bytes, env: Envelope | None = None) -> list[str]:
    verdict = classify(parse(raw), env or Envelope("carol@customer.example"), SMTP, POLICY)
    return [h.name for h in verdict.hits]


DSN = (
    b"From: MAILER-DAEMON@mx.example.com\r\nTo: support@example.com\r\nSubject: Undelivered\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
    b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n"
    b"--b--\r\n"
)

# (rule, mail it hits, a near miss it lets through, why it says it hit)
CASES = [
    (
        rules.OwnLoop(),
        mail("X-Loop: support@example.com"),
        mail("X-Loop: other@else.example"),
        "own-loop: X-Loop support@example.com",
    ),
    (
        rules.OwnLoop(),
        mail("X-Mailbridge-Ticket: 7", "Auto-Submitted: auto-replied"),
        mail("X-Mailbridge-Ticket: 7", "Auto-Submitted: no"),
        "own-loop: our Auto-Submitted mail came back",
    ),
    (
        rules.DeliveryStatusReport(),
        DSN,
        mail(sender="MAILER-DAEMON@mx.example.com"),
        "bounce: multipart/report delivery-status",
    ),
    (
        rules.AutoSubmitted(),
        mail("Auto-Submitted: auto-replied"),
        mail("Auto-Submitted: no"),
        "auto-submitted: auto-replied",
    ),
    (
        rules.AutoSubmitted(),
        mail("X-Autoreply: yes"),
        mail("X-Mailer: autoreply-o-matic"),
        "x-autoreply: yes",
    ),
    (
        rules.AutoSubmitted(),
        mail("Precedence: auto_reply"),
        mail("Precedence: first-class"),
        "precedence: auto_reply",
    ),
    (
        rules.BlockedSender(),
        mail(sender="x@spam.example"),
        mail(sender="x@notspam.example"),
        "blocked-sender: x@spam.example",
    ),
    (
        rules.BlockedSender(),
        mail("X-Spam-Flag: YES"),
        mail("X-Spam-Flag: NO"),
        "spam: X-Spam-Flag yes",
    ),
    (rules.BulkMail(), mail("Precedence: bulk"), mail("Precedence: first-class"), "bulk (bulk)"),
    (
        rules.BulkMail(),
        mail("List-Id: <members.list.example>"),
        mail("List-Unsubscribe: <mailto:x@y>"),
        "bulk (list-id)",
    ),
]


@pytest.mark.parametrize(("rule", "hit", "miss", "why"), CASES)
def test_each_rule_hits_its_mail_and_not_the_near_miss(
    rule: rules.Rule, hit: bytes, miss: bytes, why: str
) -> None:
    env = Envelope("someone@example.net")
    assert rule.check(parse(hit), env, POLICY) == why
    assert rule.check(parse(miss), env, POLICY) is None
    # every rule is in the list classify runs, and its hit is on the verdict
    assert rule.name in hits(hit, env)
    assert rule.name not in hits(miss, env)


def test_a_null_envelope_sender_is_a_bounce() -> None:
    rule = rules.DeliveryStatusReport()
    assert rule.check(msg(), Envelope(""), POLICY) == "bounce: null envelope sender"
    assert rule.check(msg(), Envelope(None), POLICY) is None  # unknown, as from a file


@pytest.mark.parametrize(
    ("rule", "action", "acknowledge"),
    [
        (rules.OwnLoop(), Action.NOT_A_TICKET, False),
        (rules.DeliveryStatusReport(), Action.NOT_A_TICKET, False),
        (rules.AutoSubmitted(), Action.NOT_A_TICKET, False),
        (rules.BlockedSender(), Action.SPAM, False),
        (rules.BulkMail(), Action.TICKET, False),
    ],
)
def test_each_rule_carries_its_action(rule: rules.Rule, action: Action, acknowledge: bool) -> None:
    assert (rule.action, rule.acknowledge) == (action, acknowledge)
    made = rule.hit("why")
    assert (made.name, made.reason, made.action, made.acknowledge) == (
        rule.name,
        "why",
        action,
        acknowledge,
    )


def test_plain_customer_mail_hits_nothing_and_may_be_acknowledged() -> None:
    verdict = classify(msg(), Envelope("carol@customer.example"), SMTP, POLICY)
    assert (verdict.kind, verdict.rule, verdict.action) == ("mail", "customer mail", Action.TICKET)
    assert verdict.acknowledge and verdict.hits == () and verdict.agent is None


def test_the_verdict_names_the_deciding_rule_and_its_action() -> None:
    verdict = classify(msg("Auto-Submitted: auto-replied"), Envelope("c@x.example"), SMTP, POLICY)
    assert (verdict.kind, verdict.rule) == ("auto-reply", "auto-submitted: auto-replied")
    assert verdict.action is Action.NOT_A_TICKET and not verdict.acknowledge

    spam = classify(msg(sender="x@spam.example"), Envelope("x@spam.example"), SMTP, POLICY)
    assert (spam.kind, spam.action) == ("blocked", Action.SPAM)


def test_every_hit_is_kept_and_the_first_deciding_one_wins() -> None:
    raw = mail("X-Loop: support@example.com", "Auto-Submitted: auto-replied", "Precedence: bulk")
    verdict = classify(parse(raw), Envelope(""), SMTP, POLICY)
    assert [h.name for h in verdict.hits] == ["loop", "bounce", "auto-reply", "bulk"]
    assert (verdict.kind, verdict.rule) == ("loop", "own-loop: X-Loop support@example.com")
    assert verdict.action is Action.NOT_A_TICKET


def test_bulk_mail_is_a_ticket_without_acknowledgement() -> None:
    verdict = classify(msg("Precedence: list"), Envelope("c@x.example"), SMTP, POLICY)
    assert (verdict.kind, verdict.action, verdict.acknowledge) == ("mail", Action.TICKET, False)
    assert verdict.rule == "customer mail: bulk (list), not acknowledged"


def test_a_blocked_list_does_not_judge_an_authenticated_agent() -> None:
    policy = Policy(agent_domains=frozenset({"spam.example"}), blocked=frozenset({"@spam.example"}))
    agent = classify(msg(sender="bob@spam.example"), Envelope(auth_user="bob"), SMTP, policy)
    assert agent.agent == "bob@spam.example" and agent.action is Action.TICKET
    assert agent.hits == ()
    # the same From without the login is a stranger's claim: the blocked list applies
    stranger = classify(msg(sender="bob@spam.example"), Envelope(), SMTP, policy)
    assert stranger.agent is None and stranger.action is Action.SPAM


def test_an_agent_login_vouches_only_for_its_own_address() -> None:
    own = classify(msg(sender="alice@example.com"), Envelope(auth_user="alice"), SMTP, POLICY)
    assert (own.agent, own.rule) == ("alice@example.com", "agent: smtp-auth alice")
    other = classify(msg(sender="alice@example.com"), Envelope(auth_user="bob"), SMTP, POLICY)
    assert other.agent is None and other.claimed_agent
    assert other.rule.startswith("customer mail: agent From without authentication")


def test_hits_are_added_to_a_text_that_does_not_already_tell_them() -> None:
    raw = mail("Auto-Submitted: auto-replied", "Precedence: bulk")
    verdict = classify(parse(raw), Envelope("c@x.example"), SMTP, POLICY)
    assert verdict.with_hits(verdict.rule) == "auto-submitted: auto-replied; rule hits: bulk (bulk)"
    assert verdict.with_hits("no thread match") == (
        "no thread match; rule hits: auto-submitted: auto-replied, bulk (bulk)"
    )
    # what another text already says is not said twice
    assert verdict.with_hits("not threaded", verdict.rule) == "not threaded; rule hits: bulk (bulk)"
    plain = classify(msg(), Envelope("c@x.example"), SMTP, POLICY)
    assert plain.with_hits("no thread match") == "no thread match"
