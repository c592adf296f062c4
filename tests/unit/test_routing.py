"""Queue routing and filters (SPEC 7), on the settings a user writes: the pure router alone."""

from __future__ import annotations

from mailbridge.config import parse_settings
from mailbridge.routing import Facts, Router

CONFIG = """
[smtp]
addresses = ["support@example.com"]

[agents]
addresses = ["alice@example.com", "bob@example.com"]

[[imap]]
name = "billing-box"
host = "imap.example.com"
username = "billing"
password_env = "PW"

[[queues]]
name = "support"
addresses = ["support@example.com"]

[[queues]]
name = "billing"
addresses = ["billing@example.com", "invoices@example.com"]
imap = ["billing-box"]

[[queues]]
name = "tech"
addresses = ["tech@example.com"]

[[filters]]
name = "vip"
match = { from = "@bigcustomer.example" }
set = { tags = ["vip"], priority = "high" }

[[filters]]
name = "refunds"
match = { subject = "refund" }
set = { queue = "billing", tags = ["refund"] }
stop = true

[[filters]]
name = "never"
match = { body = "." }
set = { tags = ["late"] }

[[filters]]
name = "spamassassin"
match = { header = "X-Spam-Flag", regex = "^yes$" }
set = { status = "spam" }
"""


def router() -> Router:
    settings = parse_settings(CONFIG, "t.toml", env={"PW": "x"})
    return Router(settings.queue_list, settings.filters, settings.tickets.plus_separator)


def test_envelope_recipient_decides_and_says_so() -> None:
    route = router().route(
        Facts(
            sender="c@x.example",
            envelope_to=("billing@example.com",),
            to=("tech@example.com",),
            body="hello",
        )
    )
    assert route.queue == "billing"
    assert route.rule == "queue billing: envelope recipient billing@example.com"
    assert route.priority == "normal" and route.tags == ("late",)


def test_plus_token_of_a_queue_address_routes_there() -> None:
    route = router().route(Facts(sender="c@x.example", envelope_to=("tech+abcdefgh@example.com",)))
    assert route.queue == "tech"


def test_delivered_to_when_the_envelope_says_nothing() -> None:
    # a forwarded copy: the envelope names a mailbox we do not route, Delivered-To does
    route = router().route(
        Facts(
            sender="c@x.example",
            envelope_to=("someone@elsewhere.example",),
            delivered_to=("invoices@example.com",),
            to=("support@example.com",),
        )
    )
    assert route.rule == "queue billing: delivered-to invoices@example.com"


def test_to_before_cc() -> None:
    r = router()
    both = r.route(
        Facts(sender="c@x.example", to=("tech@example.com",), cc=("billing@example.com",))
    )
    assert both.queue == "tech" and both.rule == "queue tech: to tech@example.com"
    cc_only = r.route(Facts(sender="c@x.example", cc=("billing@example.com",)))
    assert cc_only.rule == "queue billing: cc billing@example.com"


def test_two_queue_addresses_in_to_take_the_first() -> None:
    route = router().route(
        Facts(sender="c@x.example", to=("tech@example.com", "billing@example.com"))
    )
    assert route.queue == "tech"


def test_imap_account_then_first_queue() -> None:
    r = router()
    assert r.route(Facts(sender="c@x.example", imap_account="billing-box")).rule == (
        "queue billing: imap account billing-box"
    )
    assert r.route(Facts(sender="c@x.example")).rule == "queue support: the first queue"


def test_filter_queue_wins_over_recipient_and_stop_ends_filters() -> None:
    route = router().route(
        Facts(
            sender="ceo@bigcustomer.example",
            envelope_to=("tech@example.com",),
            subject="Refund please",
            body="text",
            headers={"x-spam-flag": ["YES"]},
        )
    )
    assert route.queue == "billing"
    assert route.rule == "queue billing: filter refunds"
    assert route.tags == ("vip", "refund")  # "never" did not run: refunds stops
    assert route.priority == "high"
    assert route.spam is None
    assert route.filters == (
        "filter vip: tag vip, priority high",
        "filter refunds: queue billing, tag refund",
    )


def test_header_filter_marks_spam() -> None:
    route = router().route(Facts(sender="x@spam.example", headers={"x-spam-flag": ["YES"]}))
    assert route.spam == "spamassassin"
    assert "filter spamassassin: status spam" in route.explain()


def test_no_queues_means_one_support_queue_of_smtp_addresses() -> None:
    settings = parse_settings('[smtp]\naddresses = ["help@example.com"]\n', "t.toml", env={})
    r = Router(settings.queue_list, settings.filters)
    assert [q.name for q in settings.queue_list] == ["support"]
    assert r.route(Facts(sender="c@x", envelope_to=("help@example.com",))).rule == (
        "queue support: envelope recipient help@example.com"
    )
