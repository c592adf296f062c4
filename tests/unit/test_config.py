"""Config: defaults, the shipped example, and errors that name file, line and key."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from mailbridge import lifecycle
from mailbridge.config import (
    Secret,
    Settings,
    load_settings,
    parse_settings,
    resolve_config_path,
)
from mailbridge.config.reload import keep_restart_only
from mailbridge.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "mailbridge.toml"

IMAP = """
[[imap]]
name = "support"
host = "imap.example.com"
username = "support@example.com"
password_env = "IMAP_PASS"
"""


def problems(text: str, env: dict[str, str] | None = None, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(text, "mailbridge.toml", env=env or {}, **kwargs)  # type: ignore[arg-type]
    return info.value.problems


@pytest.fixture
def no_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILBRIDGE_CONFIG", raising=False)
    return tmp_path


def test_defaults_without_any_file(no_config: Path) -> None:
    settings = load_settings(None)
    assert settings.source_path is None
    assert settings.database.url == "sqlite:///var/mailbridge.db"
    assert settings.smtp.listen == "127.0.0.1:2525"
    assert settings.smtp.endpoint == ("127.0.0.1", 2525)
    assert settings.smtp.mode == "smtp"
    assert settings.smtp.max_message_size == 25 * 1024 * 1024
    assert settings.smtp.timeout == timedelta(minutes=5)
    assert settings.imap == () and settings.rules == ()
    assert settings.outbound.smarthost is None
    assert settings.outbound.from_address == settings.outbound.identity == "support@localhost"
    assert settings.tickets.subject_tag == "[#{number}]"
    assert settings.cluster.lease_ttl == timedelta(seconds=30)


def test_config_path_order(no_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_config_path(None) is None
    (no_config / "config").mkdir()
    (no_config / "config" / "mailbridge.toml").write_text("")
    assert resolve_config_path(None) == Path("config/mailbridge.toml")
    monkeypatch.setenv("MAILBRIDGE_CONFIG", "/etc/mb.toml")
    assert resolve_config_path(None) == Path("/etc/mb.toml")
    assert resolve_config_path("x.toml") == Path("x.toml")


def test_unreadable_file_is_a_config_error(no_config: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings("missing.toml")
    assert info.value.problems == ["missing.toml:1: (file): cannot read: No such file or directory"]


def uncommented(text: str) -> str:
    """The example with every optional `#key = value` line (and table header) switched on."""
    return re.sub(r"^#(?=[\[a-z])", "", text, flags=re.MULTILINE)


def test_example_validates() -> None:
    # what a first `mailbridge run` in a fresh clone picks up: the embedded default's values
    settings = load_settings(EXAMPLE)
    assert settings.source_path == EXAMPLE
    assert settings.model_dump() == load_settings_default().model_dump()
    assert settings.smtp.addresses == ("support@localhost",)
    assert settings.smtp.listen == "127.0.0.1:2525"
    assert settings.database.url == "sqlite:///var/mailbridge.db"
    assert settings.outbound.smarthost is None and not settings.tickets.acknowledge
    assert settings.agents.domains == () and settings.agents.notify == ()
    assert settings.rules == ()


def load_settings_default() -> Settings:
    return parse_settings("", "<default>")


def test_example_fully_uncommented_validates() -> None:
    # every optional line switched on, except the files this host lacks (checked just below)
    text = uncommented(EXAMPLE.read_text())
    text = re.sub(r"^(tls_cert|tls_key|auth_users_file|ack_template) = .*$", "", text, flags=re.M)
    env = {
        "MAILBRIDGE_IMAP_PASSWORD": "x",
        "MAILBRIDGE_SMTP_PASSWORD": "y",
        "MAILBRIDGE_WEBHOOK_SECRET": "z",
    }
    settings = parse_settings(text, "x.toml", env=env)
    assert [rule.name for rule in settings.rules] == [
        "auto-resolve",
        "auto-close",
        "purge-spam",
        "nudge",
        "nobody-answered",
    ]
    assert settings.rules[2].then == "purge"
    assert settings.rules[3].statuses == ("answered", "resolved")
    assert settings.rules[4].to == ("lead@example.com", "owner", "queue")
    assert [s.name for s in settings.sla] == ["standard"]
    assert settings.calendar_for(settings.sla[0]).timezone == "Europe/Bucharest"
    assert settings.outbound.port == 587 and settings.outbound.starttls
    assert settings.outbound.smarthost == "smtp.example.com" and settings.tickets.acknowledge
    assert settings.agents.domains == ("example.com",)


def test_example_commented_settings_are_real_keys() -> None:
    # uncommenting every optional `#key = value` line must leave only files this host lacks
    text = uncommented(EXAMPLE.read_text())
    env = {
        "MAILBRIDGE_IMAP_PASSWORD": "x",
        "MAILBRIDGE_SMTP_PASSWORD": "y",
        "MAILBRIDGE_WEBHOOK_SECRET": "z",
    }
    found = problems(text, env, source_path=EXAMPLE)
    assert found and all("file not found" in line for line in found), found


def test_example_imap_block_validates() -> None:
    text = EXAMPLE.read_text()
    block = re.search(r"^#\[\[imap\]\].*?(?=^\[)", text, flags=re.MULTILINE | re.DOTALL)
    assert block
    text = text.replace(block[0], re.sub(r"^#(?=[\[a-z])", "", block[0], flags=re.MULTILINE))
    settings = parse_settings(text, "x.toml", env={"MAILBRIDGE_IMAP_PASSWORD": "pw"})
    account = settings.imap[0]
    assert (account.name, account.port, account.tls) == ("support", 993, "implicit")
    assert (account.after_action, account.after_folder) == ("move", "Processed")
    assert account.password is not None and account.password.get() == "pw"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            IMAP + IMAP.replace('"support"', '"sales"') + "colour = 1\n",
            "mailbridge.toml:13: imap[1].colour: unknown key",
            id="unknown-key-second-imap",
        ),
        pytest.param(
            '[[rules]]\nname = "r"\nwhen = "answered"\nidle_for = "7x"\nthen = "resolved"\n',
            "mailbridge.toml:4: rules[0].idle_for: invalid duration '7x' (use e.g. 90s, 15m, 2h, 7d, 1w)",
            id="bad-duration",
        ),
        pytest.param(
            IMAP + 'port = "993"\n',
            "mailbridge.toml:7: imap[0].port: expected an integer",
            id="port-not-int",
        ),
        pytest.param(
            IMAP.replace('host = "imap.example.com"\n', ""),
            "mailbridge.toml:2: imap[0].host: missing required key",
            id="missing-required-key",
        ),
        pytest.param(
            IMAP.replace('password_env = "IMAP_PASS"', 'password = "hunter2"'),
            "mailbridge.toml:6: imap[0].password: secrets never sit in the file: "
            "use password_file, password_env, oauth2_token_command",
            id="inline-password",
        ),
        pytest.param(
            IMAP + 'tls = "none"\n',
            "mailbridge.toml:7: imap[0].tls: none is allowed only for 127.0.0.1, ::1 or localhost",
            id="tls-none-remote",
        ),
        pytest.param(
            IMAP.replace('password_env = "IMAP_PASS"\n', ""),
            "mailbridge.toml:2: imap[0]: needs one of password_file, password_env, oauth2_token_command",
            id="no-password-source",
        ),
        pytest.param(
            "[smtp]\nlisten = 127.0.0.1:25\n",
            "mailbridge.toml:2: (syntax): Expected newline or end of document after a statement",
            id="syntax-error",
        ),
        pytest.param(
            '[smtp]\nmode = "esmtp"\n',
            "mailbridge.toml:2: smtp.mode: must be one of: smtp, lmtp",
            id="choice",
        ),
        pytest.param(
            '[agents]\naddresses = [\n  "a@example.com",\n  "not-an-address",\n]\n',
            "mailbridge.toml:4: agents.addresses[1]: not an email address: 'not-an-address'",
            id="array-item-on-its-own-line",
        ),
        pytest.param(
            'smtp.mode = "x"\n',
            "mailbridge.toml:1: smtp.mode: must be one of: smtp, lmtp",
            id="dotted-key",
        ),
        pytest.param(
            '[[rules]]\nname = "p"\nwhen = "open"\nidle_for = "1d"\nthen = "purge"\n',
            "mailbridge.toml:5: rules[0].then: purge needs when = closed, spam or deleted",
            id="purge-live-ticket",
        ),
        pytest.param(
            '[imap]\nname = "x"\n',
            "mailbridge.toml:1: imap: expected an array of tables: write [[imap]]",
            id="table-instead-of-array",
        ),
        pytest.param(
            '[tickets]\nsubject_tag = "[#{id}]"\n',
            "mailbridge.toml:2: tickets.subject_tag: must contain {number} and no other {...} fields, e.g. '[#{number}]'",
            id="subject-tag",
        ),
    ],
)
def test_error_names_file_line_and_key(text: str, expected: str) -> None:
    assert problems(text, {"IMAP_PASS": "x"}) == [expected]


def test_all_errors_are_reported_in_line_order() -> None:
    text = (
        '[smtp]\nmode = "esmtp"\nmax_message_size = "lots"\n'
        + IMAP
        + "port = 0\nidle = 'yes'\n"
        + IMAP.replace('"support"', '"support"\nbogus = 1')
        + '[[rules]]\nname = "r"\n'
    )
    assert problems(text, {"IMAP_PASS": "x"}) == [
        "mailbridge.toml:2: smtp.mode: must be one of: smtp, lmtp",
        "mailbridge.toml:3: smtp.max_message_size: invalid size 'lots' (use e.g. 512KB, 25MB, 1GB)",
        "mailbridge.toml:10: imap[0].port: must be at least 1",
        "mailbridge.toml:11: imap[0].idle: expected true or false",
        "mailbridge.toml:14: imap[1].name: duplicate name 'support'",
        "mailbridge.toml:15: imap[1].bogus: unknown key",
        "mailbridge.toml:19: rules[0].idle_for: missing required key",
        "mailbridge.toml:19: rules[0].then: missing required key",
        "mailbridge.toml:19: rules[0].when: missing required key",
    ]


def test_duplicate_names_are_refused() -> None:
    assert problems(IMAP + IMAP, {"IMAP_PASS": "x"}) == [
        "mailbridge.toml:9: imap[1].name: duplicate name 'support'"
    ]


def test_secret_never_prints() -> None:
    secret = Secret("hunter2")
    assert secret.get() == "hunter2"
    assert "hunter2" not in f"{secret} {secret!r} {[secret]}"
    assert str(secret) == "**********"
    settings = parse_settings(IMAP, "x.toml", env={"IMAP_PASS": "hunter2"})
    assert settings.imap[0].password == Secret("hunter2")
    assert "hunter2" not in repr(settings) + str(settings.model_dump())


def test_secrets_from_env_and_file(tmp_path: Path) -> None:
    (tmp_path / "imap.pass").write_text("s3cret\n")
    text = IMAP.replace('password_env = "IMAP_PASS"', 'password_file = "imap.pass"') + (
        '[outbound]\nsmarthost = "smtp.example.com"\nusername = "u"\npassword_env = "SMTP_PASS"\n'
    )
    settings = parse_settings(
        text, "m.toml", source_path=tmp_path / "m.toml", env={"SMTP_PASS": "other"}
    )
    assert settings.imap[0].password_file == tmp_path / "imap.pass"
    assert settings.imap[0].password is not None and settings.imap[0].password.get() == "s3cret"
    assert settings.outbound.password is not None and settings.outbound.password.get() == "other"


def test_missing_secret_sources_name_their_key(tmp_path: Path) -> None:
    text = IMAP.replace('password_env = "IMAP_PASS"', 'password_file = "nope.pass"') + (
        '[outbound]\nusername = "u"\npassword_env = "SMTP_PASS"\n'
    )
    assert problems(text, {}, source_path=tmp_path / "m.toml") == [
        f"mailbridge.toml:6: imap[0].password_file: file not found: {tmp_path / 'nope.pass'}",
        "mailbridge.toml:9: outbound.password_env: environment variable SMTP_PASS is not set",
    ]


def test_oauth2_command_is_kept_not_run() -> None:
    text = IMAP.replace('password_env = "IMAP_PASS"', 'oauth2_token_command = "false"')
    account = parse_settings(text, "x.toml", env={}).imap[0]
    assert account.oauth2_token_command == "false" and account.password is None


def test_values_are_parsed() -> None:
    text = (
        '[smtp]\naddresses = ["Help@Example.COM"]\nmax_message_size = "512KB"\ntimeout = 90\n'
        '[cluster]\nlease_ttl = "1h30m"\n[metrics]\nlisten = "[::1]:9464"\n'
        '[agents]\ndomains = ["Example.com", "@example.org"]\n'
        '[tickets]\nblocked_senders = ["@Spam.example", "X@y.org"]\n'
        + IMAP.replace("[[imap]]", '[[imap]]\ntls = "starttls"\nafter = "delete"')
    )
    settings = parse_settings(text, "x.toml", env={"IMAP_PASS": "x"})
    assert settings.smtp.addresses == ("help@example.com",)
    assert settings.outbound.from_address == "help@example.com"
    assert settings.smtp.max_message_size == 512 * 1024
    assert settings.smtp.timeout == timedelta(seconds=90)
    assert settings.cluster.lease_ttl == timedelta(hours=1, minutes=30)
    assert settings.agents.domains == ("example.com", "example.org")
    assert settings.metrics.listen == "[::1]:9464"
    assert settings.tickets.blocked_senders == ("@spam.example", "x@y.org")
    assert settings.imap[0].port == 143
    assert (settings.imap[0].after_action, settings.imap[0].after_folder) == ("delete", None)


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "ack.txt").write_text("Thanks")
    (tmp_path / "m.toml").write_text(
        '[tickets]\nack_template = "ack.txt"\n[smtp]\nlisten = "unix:run/lmtp.sock"\n'
    )
    settings = load_settings(tmp_path / "m.toml")
    assert settings.tickets.ack_template == tmp_path / "ack.txt"
    assert settings.smtp.endpoint == tmp_path / "run" / "lmtp.sock"


def test_settings_are_frozen(no_config: Path) -> None:
    settings = load_settings(None)
    with pytest.raises(ValidationError):
        settings.smtp.mode = "lmtp"  # type: ignore[misc]
    assert isinstance(settings, Settings)


def test_cross_key_problems_are_reported_beside_field_errors() -> None:
    # pydantic skips a table's own checks while a key of it is invalid; check-config must not
    text = (
        '[smtp]\nrequire_tls = true\ncolour = "blue"\n'
        '[outbound]\nusername = "u"\nport = "x"\n'
        '[tickets]\nacknowledge = "yes"\n'
    )
    assert problems(text) == [
        "mailbridge.toml:2: smtp.require_tls: needs tls_cert and tls_key",
        "mailbridge.toml:3: smtp.colour: unknown key",
        "mailbridge.toml:5: outbound.username: needs password_file or password_env",
        "mailbridge.toml:6: outbound.port: expected an integer",
        "mailbridge.toml:8: tickets.acknowledge: expected true or false",
    ]


def test_unsupported_database_and_absurd_sizes_are_refused() -> None:
    text = (
        '[database]\nurl = "mysql://root@localhost/mb"\n'
        '[smtp]\nmax_message_size = "100GB"\n' + IMAP + 'max_message_size = "2GB"\n'
    )
    assert problems(text, {"IMAP_PASS": "x"}) == [
        "mailbridge.toml:2: database.url: unsupported database mysql:// "
        "(use sqlite:///path or postgresql://user@host/db)",
        "mailbridge.toml:4: smtp.max_message_size: must be at most 1GB (got '100GB')",
        "mailbridge.toml:11: imap[0].max_message_size: must be at most 1GB (got '2GB')",
    ]
    ok = parse_settings(
        '[database]\nurl = "postgresql+psycopg://u@h/db"\n[smtp]\nmax_message_size = "1GB"\n',
        "ok.toml",
    )
    assert ok.smtp.max_message_size == 1024**3


QUEUES = """
[agents]
addresses = ["alice@example.com"]
domains = ["staff.example.com"]

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
addresses = ["billing@example.com", "support@example.com"]
imap = ["billing-box", "nobox"]
members = ["alice@example.com", "joe@staff.example.com", "mallory@elsewhere.example"]

[[filters]]
name = "vip"
match = { from = "@bigcustomer.example" }
set = { queue = "sales" }
"""


def test_queue_errors_name_file_line_and_key() -> None:
    assert problems(QUEUES, env={"PW": "x"}) == [
        "mailbridge.toml:18: queues[1].addresses[1]: support@example.com is also an address of queue 'support'",
        "mailbridge.toml:19: queues[1].imap[1]: no [[imap]] named 'nobox'",
        "mailbridge.toml:20: queues[1].members[2]: mallory@elsewhere.example is not an agent ([agents])",
        "mailbridge.toml:25: filters[0].set: unknown queue 'sales'",
    ]


def test_queues_and_filters_parse() -> None:
    text = QUEUES.replace(', "support@example.com"]', "]").replace(', "nobox"', "")
    text = text.replace(', "mallory@elsewhere.example"', "").replace('"sales"', '"billing"')
    settings = parse_settings(text, "t.toml", env={"PW": "x"})
    assert [q.name for q in settings.queue_list] == ["support", "billing"]
    assert settings.filters[0].set_.queue == "billing"
    assert settings.filters[0].match.from_ == "@bigcustomer.example"
    assert "billing@example.com" in settings.accepted_addresses


RULE = '[[rules]]\nname = "r"\nwhen = "{when}"\nidle_for = "1d"\nthen = "{then}"\n'


@pytest.mark.parametrize("status", list(lifecycle.Status))
def test_rule_statuses_follow_the_lifecycle_table(status: lifecycle.Status) -> None:
    # a status rule may act where the lifecycle has its transition; purge where tickets are done
    allowed = {
        "resolved": (status, lifecycle.Kind.RESOLVE) in lifecycle.TRANSITIONS,
        "closed": (status, lifecycle.Kind.CLOSE) in lifecycle.TRANSITIONS,
        "purge": status in lifecycle.PURGEABLE,
    }
    for then, ok in allowed.items():
        try:
            settings = parse_settings(RULE.format(when=status, then=then), "m.toml", env={})
        except ConfigError as exc:
            assert not ok
            assert exc.problems[0].startswith(f"m.toml:5: rules[0].then: {then} needs when = ")
        else:
            assert ok
            assert settings.rules[0].statuses == (status.value,)


def test_a_reload_keeps_what_needs_a_restart() -> None:
    running = parse_settings('[database]\nurl = "sqlite:///a.db"\n', "a.toml", env={})
    new = parse_settings(
        '[database]\nurl = "sqlite:///b.db"\n[smtp]\naddresses = ["help@example.com"]\n',
        "b.toml",
        env={},
    )
    kept, changed = keep_restart_only(running, new)
    assert changed == ["database.url"]
    assert kept.database.url == "sqlite:///a.db"
    assert kept.smtp.addresses == ("help@example.com",)
    assert keep_restart_only(running, running) == (running, [])
