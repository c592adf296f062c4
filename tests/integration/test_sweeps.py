"""Time rules on SQLite and PostgreSQL with a set clock: postponements wake on time, each rule's
boundary, idempotence (twice, concurrently, two nodes), catch-up after downtime, purge tombstones,
the scheduler component and `rules run`."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mailbridge.cli import cli
from mailbridge.envelope import Envelope, Source
from mailbridge.outbound.decide import Outbound
from mailbridge.scheduler import Scheduler
from mailbridge.storage import repo
from mailbridge.storage.models import Outbox
from mailbridge.sweeps import Change, Sweeps
from tests.mail import make_mail, message_id_of

FILE = Source("file", "test", live=False)
SECOND = timedelta(seconds=1)

RULES = """
[[rules]]
name = "auto-resolve"
when = "answered"
idle_for = "7d"
then = "resolved"
notify = true

[[rules]]
name = "auto-close"
when = "resolved"
idle_for = "3d"
then = "closed"

[[rules]]
name = "purge-spam"
when = "spam"
idle_for = "30d"
then = "purge"

[[rules]]
name = "purge-deleted"
when = "deleted"
idle_for = "30d"
then = "purge"
"""


class NoticeOutbound(Outbound):
    """Outbound with the rule notice the sweeps call: one outbox row in the caller's transaction."""

    def rule_notice(self, session: Any, ticket: Any, rule: str, now: datetime) -> None:
        session.add(
            Outbox(
                ticket_number=ticket.number,
                kind="rule",
                mail_from="support@example.com",
                rcpt_tos=ticket.customer,
                rcpt_key=ticket.customer,
                raw=f"Subject: [#{ticket.number}] {rule}\r\n\r\nresolved\r\n".encode(),
                next_attempt_at=now,
                created_at=now,
            ),
        )


# --- helpers --------------------------------------------------------------------------------


def rules_app(make_app: Any, url: str) -> Any:
    return make_app(url, RULES)


def sweeps(app: Any, **kwargs: Any) -> Sweeps:
    return Sweeps(app.store, app.settings, app.clock, NoticeOutbound(app.settings), **kwargs)


def new_ticket(app: Any, subject: str = "Printer on fire") -> tuple[int, bytes]:
    raw = make_mail(subject=subject)
    return app.ingestor.accept(raw, Envelope(), FILE).ticket, raw


def answered_ticket(app: Any, subject: str = "Printer on fire") -> int:
    number, raw = new_ticket(app, subject)
    reply = make_mail(
        sender="alice@example.com",
        subject=f"Re: {subject}",
        body="On it.\n",
        in_reply_to=message_id_of(raw),
    )
    app.ingestor.accept(reply, Envelope(auth_user="alice"), FILE)
    assert status(app, number) == "answered"
    return number


def ticket_in(app: Any, state: str) -> int:
    """A ticket brought to `state` the way an operator would."""
    if state == "answered":
        return answered_ticket(app)
    number, _ = new_ticket(app)
    if state != "new":
        app.actions.act(
            number,
            {"resolved": "resolve", "spam": "spam", "deleted": "delete", "closed": "close"}[state],
            "cli:test",
        )
    assert status(app, number) == state
    return number


def status(app: Any, number: int) -> str | None:
    with app.store.unit() as s:
        t = repo.get_ticket(s, number)
        return t.status if t else None


def events(app: Any, number: int) -> list[tuple[str, str | None, str | None, str]]:
    with app.store.unit() as s:
        return [
            (e.kind, e.from_status, e.to_status, e.actor) for e in repo.ticket_events(s, number)
        ]


def notices(app: Any) -> list[int | None]:
    with app.store.unit() as s:
        return [row.ticket_number for row in repo.list_outbox(s) if row.kind == "rule"]


# --- postponements ----------------------------------------------------------------------------


@pytest.mark.parametrize("before", ["new", "answered"])
def test_postponed_ticket_wakes_at_its_time(
    make_app: Any, db_url: str, clock: Any, before: str
) -> None:
    app = rules_app(make_app, db_url)
    number = ticket_in(app, before)
    until = clock.now + timedelta(days=2)
    app.actions.act(number, "postpone", "cli:test", until)

    assert sweeps(app).run(until - SECOND) == []
    assert status(app, number) == "postponed"

    woken = "new" if before == "new" else "open"
    clock.now = until + SECOND
    assert sweeps(app).run(clock.now) == [Change(number, "postponed", woken, "wake")]
    assert status(app, number) == woken
    assert events(app, number)[-1] == ("wake", "postponed", woken, "rule:wake")
    with app.store.unit() as s:
        t = repo.get_ticket(s, number)
        assert t.postponed_until is None and t.last_activity_at == clock.now


def test_postponement_is_due_at_exactly_its_time(make_app: Any, db_url: str, clock: Any) -> None:
    app = rules_app(make_app, db_url)
    number = ticket_in(app, "new")
    until = clock.now + timedelta(hours=3)
    app.actions.act(number, "postpone", "cli:test", until)
    assert [c.to_status for c in sweeps(app).run(until)] == ["new"]


def test_a_moved_postponement_is_not_woken_early(make_app: Any, db_url: str, clock: Any) -> None:
    app = rules_app(make_app, db_url)
    number = ticket_in(app, "new")
    app.actions.act(number, "postpone", "cli:test", clock.now + timedelta(days=1))
    app.actions.act(number, "postpone", "cli:test", clock.now + timedelta(days=5))
    assert sweeps(app).run(clock.now + timedelta(days=2)) == []
    assert status(app, number) == "postponed"


# --- rule boundaries --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "when", "idle", "then", "kind"),
    [
        ("auto-resolve", "answered", timedelta(days=7), "resolved", "resolve"),
        ("auto-close", "resolved", timedelta(days=3), "closed", "close"),
        ("purge-spam", "spam", timedelta(days=30), "purged", None),
        ("purge-deleted", "deleted", timedelta(days=30), "purged", None),
    ],
)
def test_rule_boundary(
    make_app: Any,
    db_url: str,
    clock: Any,
    rule: str,
    when: str,
    idle: timedelta,
    then: str,
    kind: str | None,
) -> None:
    app = rules_app(make_app, db_url)
    number = ticket_in(app, when)
    since = clock.now

    assert sweeps(app).run(since + idle - SECOND) == []
    assert status(app, number) == when

    clock.now = since + idle
    assert sweeps(app).run(clock.now) == [Change(number, when, then, rule)]
    if kind is None:
        assert status(app, number) is None
        return
    assert status(app, number) == then
    assert events(app, number)[-1] == (kind, when, then, f"rule:{rule}")


def test_idle_counts_from_the_last_message(make_app: Any, db_url: str, clock: Any) -> None:
    app = make_app(
        db_url, '[[rules]]\nname = "stale"\nwhen = "new"\nidle_for = "2d"\nthen = "closed"\n'
    )
    number, raw = new_ticket(app)
    clock.advance(days=1)
    # a customer's follow-up keeps the ticket new, but it is no longer idle since creation
    app.ingestor.accept(
        make_mail(subject="Re: Printer on fire", in_reply_to=message_id_of(raw)), Envelope(), FILE
    )
    assert sweeps(app).run(clock.now + timedelta(days=1, hours=23)) == []
    assert [c.rule for c in sweeps(app).run(clock.now + timedelta(days=2))] == ["stale"]
    assert status(app, number) == "closed"


def test_notice_is_queued_with_the_transition(make_app: Any, db_url: str, clock: Any) -> None:
    app = rules_app(make_app, db_url)
    a, b = answered_ticket(app, "a"), ticket_in(app, "resolved")
    clock.advance(days=30)
    sweeps(app).run(clock.now)
    # auto-resolve notifies, auto-close (for b) does not
    assert notices(app) == [a]
    assert status(app, b) == "closed"


def test_outbound_without_rule_notices_is_skipped(make_app: Any, db_url: str, clock: Any) -> None:
    app = rules_app(make_app, db_url)
    number = answered_ticket(app)
    plain = Sweeps(app.store, app.settings, app.clock, outbound=object())
    assert [c.number for c in plain.run(clock.now + timedelta(days=7))] == [number]
    assert notices(app) == []


def test_the_real_outbound_queues_one_notice_to_the_customer(
    make_app: Any, db_url: str, clock: Any
) -> None:
    app = rules_app(make_app, db_url)
    if not hasattr(app.outbound, "rule_notice"):
        pytest.skip("Outbound.rule_notice is not built yet")
    number = answered_ticket(app)
    at = clock.now + timedelta(days=7)
    for _ in range(2):
        Sweeps(app.store, app.settings, app.clock, app.outbound).run(at)
    with app.store.unit() as s:
        rows = [r for r in repo.list_outbox(s) if r.kind == "rule"]
    assert [(r.ticket_number, r.rcpt_tos) for r in rows] == [(number, "carol@customer.example")]


# --- idempotence and concurrency ---------------------------------------------------------------


def test_running_twice_changes_once(make_app: Any, db_url: str, clock: Any) -> None:
    app = rules_app(make_app, db_url)
    number = answered_ticket(app)
    at = clock.now + timedelta(days=8)
    assert len(sweeps(app).run(at)) == 1
    assert sweeps(app).run(at) == []
    assert sweeps(app).run(at + SECOND) == []
    assert [e for e in events(app, number) if e[0] == "resolve"] == [
        ("resolve", "answered", "resolved", "rule:auto-resolve")
    ]
    assert notices(app) == [number]


def test_two_nodes_at_once_change_each_ticket_once(make_app: Any, db_url: str, clock: Any) -> None:
    """Two App instances = two engines and connections (two nodes), sweeping at the same moment."""
    node_a = rules_app(make_app, db_url)
    node_b = rules_app(make_app, db_url)
    numbers = [answered_ticket(node_a, f"t{i}") for i in range(12)]
    postponed = ticket_in(node_a, "new")
    node_a.actions.act(postponed, "postpone", "cli:test", clock.now + timedelta(days=1))
    at = clock.now + timedelta(days=8)

    start = threading.Barrier(2)
    results: dict[str, list[Change]] = {}
    errors: list[BaseException] = []

    def sweep(name: str, node: Any) -> None:
        try:
            start.wait()
            results[name] = sweeps(node, batch_size=3).run(at)
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [
        threading.Thread(target=sweep, args=(n, node)) for n, node in (("a", node_a), ("b", node_b))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors

    changed = sorted(c.number for r in results.values() for c in r)
    assert changed == sorted([*numbers, postponed])
    for number in numbers:
        assert [e for e in events(node_a, number) if e[3] == "rule:auto-resolve"] == [
            ("resolve", "answered", "resolved", "rule:auto-resolve")
        ]
    assert sum(1 for e in events(node_a, postponed) if e[0] == "wake") == 1
    assert sorted(notices(node_a)) == sorted(numbers)


def test_catch_up_after_a_week_of_downtime(make_app: Any, db_url: str, clock: Any) -> None:
    app = rules_app(make_app, db_url)
    answered = [answered_ticket(app, f"a{i}") for i in range(5)]
    resolved = [ticket_in(app, "resolved") for _ in range(4)]
    postponed = [ticket_in(app, "new") for _ in range(3)]
    for i, number in enumerate(postponed):
        app.actions.act(number, "postpone", "cli:test", clock.now + timedelta(days=i + 1))
    fresh_spam = ticket_in(app, "spam")

    clock.advance(days=7)
    changes = sweeps(app, batch_size=2).run(clock.now)

    assert sorted((c.number, c.to_status) for c in changes) == sorted(
        [(n, "resolved") for n in answered]
        + [(n, "closed") for n in resolved]
        + [(n, "new") for n in postponed]
    )
    assert status(app, fresh_spam) == "spam"
    # a ticket resolved by this run is idle again only from now: it is not closed in the same run
    assert all(status(app, n) == "resolved" for n in answered)
    assert sweeps(app).run(clock.now) == []


def test_scheduler_catches_up_at_start(make_app: Any, db_url: str, clock: Any) -> None:
    """A daemon started after downtime: the scheduler's first sweep runs at start."""
    app = rules_app(make_app, db_url)
    numbers = [answered_ticket(app, f"s{i}") for i in range(3)]
    clock.advance(days=7)

    async def main() -> None:
        scheduler = Scheduler(sweeps(app), clock, interval=3600)
        await scheduler.start()
        try:
            for _ in range(200):
                if scheduler.runs:
                    break
                await asyncio.sleep(0.05)
        finally:
            await scheduler.stop()
        assert scheduler.runs == 1

    asyncio.run(main())
    assert [status(app, n) for n in numbers] == ["resolved"] * 3


def test_scheduler_reload_swaps_the_rules(
    make_app: Any, make_settings: Any, db_url: str, clock: Any
) -> None:
    app = make_app(db_url)  # no rules at first
    number = answered_ticket(app)
    scheduler = Scheduler(sweeps(app), clock)
    clock.advance(days=8)
    assert asyncio.run(scheduler.run_once()) == []
    scheduler.reload(make_settings(db_url, RULES))
    assert [c.rule for c in asyncio.run(scheduler.run_once())] == ["auto-resolve"]
    assert status(app, number) == "resolved"


# --- purge ----------------------------------------------------------------------------------


def test_purge_leaves_tombstones_so_the_same_mail_is_a_duplicate(
    make_app: Any, db_url: str, clock: Any
) -> None:
    app = rules_app(make_app, db_url)
    number, raw = new_ticket(app)
    app.actions.act(number, "spam", "cli:test")
    clock.advance(days=30)
    assert sweeps(app).run(clock.now) == [Change(number, "spam", "purged", "purge-spam")]
    with app.store.unit() as s:
        assert repo.get_ticket(s, number) is None
        assert repo.ticket_events(s, number) == []
    again = app.ingestor.accept(raw, Envelope(), FILE)
    assert again.outcome == "duplicate"
    with app.store.unit() as s:
        assert repo.list_tickets(s) == []


def test_dry_run_changes_nothing(make_app: Any, db_url: str, clock: Any) -> None:
    app = rules_app(make_app, db_url)
    answered = answered_ticket(app)
    spam = ticket_in(app, "spam")
    clock.advance(days=31)
    would = sweeps(app, batch_size=1).run(clock.now, dry_run=True)
    assert sorted((c.number, c.to_status) for c in would) == [
        (answered, "resolved"),
        (spam, "purged"),
    ]
    assert (status(app, answered), status(app, spam)) == ("answered", "spam")
    assert notices(app) == []
    assert sorted((c.number, c.to_status) for c in sweeps(app).run(clock.now)) == sorted(
        (c.number, c.to_status) for c in would
    )


# --- CLI ------------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "cli.toml"
    path.write_text(
        f'[database]\nurl = "{db_url}"\n\n[smtp]\naddresses = ["support@example.com"]\n\n' + RULES
    )
    return path


def mb(config: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def test_rules_run_cli_dry_run_then_for_real(config: Path, tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(make_mail())
    assert mb(config, "ingest", str(tmp_path / "a.eml")).exit_code == 0
    assert mb(config, "ticket", "resolve", "1").exit_code == 0
    later = (datetime.now().astimezone() + timedelta(days=4)).strftime("%Y-%m-%dT%H:%M")

    early = mb(config, "rules", "run", "--at", "1d")
    assert (early.exit_code, early.stdout) == (0, "")

    dry = mb(config, "rules", "run", "--dry-run", "--at", later)
    assert dry.exit_code == 0, dry.output
    assert dry.stdout == "#1 resolved -> closed (rule auto-close)\n"
    assert "would change 1 tickets" in dry.stderr
    assert json.loads(mb(config, "tickets", "--json").stdout)[0]["status"] == "resolved"

    real = mb(config, "rules", "run", "--json", "--at", later)
    assert json.loads(real.stdout) == [
        {"ticket": 1, "from_status": "resolved", "to_status": "closed", "rule": "auto-close"}
    ]
    assert json.loads(mb(config, "tickets", "--json").stdout)[0]["status"] == "closed"
    assert json.loads(mb(config, "rules", "run", "--json", "--at", later).stdout) == []


def test_rules_run_cli_rejects_a_bad_time(config: Path) -> None:
    result = mb(config, "rules", "run", "--at", "next tuesday")
    assert result.exit_code == 2 and "cannot read the time" in result.output
