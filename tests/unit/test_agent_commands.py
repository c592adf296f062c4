"""Agent commands at the top of a reply (`#resolve`, `#postpone 3d`, ...): which lines are
commands, what is left to relay, and when a postponement ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from mailbridge.agent_commands import MAX_POSTPONE, Command, postpone_until, split_commands

NOW = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def test_a_reply_without_commands_is_relayed_whole() -> None:
    body = "Hello Carol,\n\nplease restart the printer.\n"
    parsed = split_commands(body)
    assert parsed.commands == () and parsed.unknown == ()
    assert parsed.text == body


def test_leading_commands_are_taken_out_of_the_text() -> None:
    parsed = split_commands("#resolve\n#tag vip refund\n\nFixed it, Carol.\n\n#close\n")
    assert parsed.commands == (Command("resolve"), Command("tag", "vip refund"))
    # a command after the text is text: only the leading lines command
    assert parsed.text == "Fixed it, Carol.\n\n#close"


def test_commands_are_case_insensitive_and_keep_their_argument() -> None:
    parsed = split_commands("  #POSTPONE  3d  \n")
    assert parsed.commands == (Command("postpone", "3d"),)
    assert parsed.text == ""


def test_a_hashtag_opening_a_normal_reply_is_text() -> None:
    body = "#hashtag is what the customer typed\nso we answer it.\n"
    parsed = split_commands(body)
    assert parsed.commands == () and parsed.unknown == ()
    assert parsed.text == body
    # nor does a command on the line after it count: the reply had already begun
    later = "#hashtag\n#resolve\nThanks\n"
    assert split_commands(later).commands == () and split_commands(later).text == later


def test_an_unknown_word_among_commands_is_reported() -> None:
    parsed = split_commands("#resolve\n#resolv\nThanks!\n")
    assert parsed.commands == (Command("resolve"),)
    assert parsed.unknown == ("#resolv",)
    assert parsed.text == "Thanks!"


def test_a_note_is_a_command_like_the_others() -> None:
    parsed = split_commands("#note\nCustomer called, waiting for the part.\n")
    assert parsed.commands == (Command("note"),)
    assert parsed.text == "Customer called, waiting for the part."


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("3d", NOW + timedelta(days=3)),
        ("12h", NOW + timedelta(hours=12)),
        ("90m", NOW + timedelta(minutes=90)),
        ("2W", NOW + timedelta(weeks=2)),
        ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12-01T09:00", datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),
        (
            "2026-12-01T09:00+02:00",
            datetime(2026, 12, 1, 9, 0, tzinfo=timezone(timedelta(hours=2))),
        ),
    ],
)
def test_postpone_until_reads_relative_and_absolute_times(
    argument: str, expected: datetime
) -> None:
    assert postpone_until(argument, NOW) == expected


@pytest.mark.parametrize("argument", ["", "soon", "3 fortnights", "2026-13-01"])
def test_postpone_until_refuses_what_it_cannot_read(argument: str) -> None:
    with pytest.raises(ValueError, match="cannot read the time"):
        postpone_until(argument, NOW)


@pytest.mark.parametrize("argument", ["4000d", "99999999999999999999w", "9999-01-01"])
def test_postpone_until_refuses_a_time_too_far_ahead(argument: str) -> None:
    with pytest.raises(ValueError, match="too far ahead"):
        postpone_until(argument, NOW)


def test_the_longest_postponement_is_accepted() -> None:
    days = MAX_POSTPONE.days
    assert postpone_until(f"{days}d", NOW) == NOW + MAX_POSTPONE
