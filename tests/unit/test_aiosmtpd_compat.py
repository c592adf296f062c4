"""Pins what `sources/smtp/aiosmtpd_compat.py` relies on inside aiosmtpd, against the installed one.

The replies aiosmtpd writes itself are recognised by their text: each is provoked here from a
stock aiosmtpd protocol, so a release that rewords one fails this test instead of letting the
reply reach senders without its enhanced status code. (FastSMTP's pins: test_smtp_fast.py.)
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import ssl

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from mailbridge.sources.smtp.aiosmtpd_compat import TESTED, StockReply, stock_reply
from tests.smtp_client import converse

PEER = ("203.0.113.9", 25)


def test_the_installed_aiosmtpd_is_a_version_this_module_was_checked_against() -> None:
    version = tuple(int(part) for part in importlib.metadata.version("aiosmtpd").split(".")[:3])
    low, high = TESTED
    assert low <= version < high


def stock(kind: type[SMTP], sends: list[bytes], **options: object) -> list[str]:
    async def run() -> list[str]:
        server = kind(object(), hostname="mx.example", loop=asyncio.get_running_loop(), **options)
        return await converse(server, PEER, sends)

    return asyncio.run(run())


def test_aiosmtpd_size_and_data_refusals_are_recognised() -> None:
    transaction = [b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>", b"DATA"]
    *_, size, _, _, _, too_much = stock(
        SMTP,
        [
            b"EHLO client",
            b"MAIL FROM:<a@example.com> SIZE=5000",
            *transaction,
            b"x" * 90 + b"\r\n.",
        ],
        data_size_limit=50,
    )
    assert stock_reply(size) is StockReply.SIZE_TOO_BIG
    assert stock_reply(too_much.encode()) is StockReply.TOO_MUCH_DATA
    *_, too_long = stock(SMTP, [b"EHLO client", *transaction, b"y" * 3000 + b"\r\n."])
    assert stock_reply(too_long) is StockReply.LINE_TOO_LONG
    assert StockReply.TOO_MUCH_DATA.ends_data and StockReply.LINE_TOO_LONG.ends_data
    assert not StockReply.SIZE_TOO_BIG.ends_data
    assert stock_reply("250 OK") is None


def test_starttls_first_is_recognised_and_lhlo_is_allowed_before_it() -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _, ehlo, mail = stock(
        SMTP, [b"EHLO client", b"MAIL FROM:<a@example.com>"], tls_context=tls, require_starttls=True
    )
    assert ehlo.startswith("250-") and "STARTTLS" in ehlo
    assert stock_reply(mail) is StockReply.STARTTLS_FIRST
    _, lhlo = stock(LMTP, [b"LHLO client"], tls_context=tls, require_starttls=True)
    assert lhlo.startswith("250-") and "STARTTLS" in lhlo
