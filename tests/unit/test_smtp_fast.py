"""FastSMTP answers exactly as stock aiosmtpd does, with the per-connection discovery done once."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator

import pytest
from aiosmtpd.smtp import SMTP, AuthResult
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.sources.smtp import aiosmtpd_compat as smtp_fast
from mailbridge.sources.smtp.aiosmtpd_compat import FastSMTP
from tests.smtp_client import PeerTransport


class Hooks:
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        return responses

    async def handle_DATA(self, server, session, envelope):
        return "250 OK"

    async def auth_CUSTOM(self, server, args):
        return AuthResult(success=False)


class FastHooks(Hooks):
    pass


smtp_fast.register(FastHooks)


class Stock(SMTP):
    async def smtp_XFOO(self, arg: str) -> None:
        await self.push("250 foo")


class Fast(FastSMTP):
    async def smtp_XFOO(self, arg: str) -> None:
        await self.push("250 foo")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def discovered(server: SMTP) -> tuple[object, ...]:
    return (
        {
            name: (attr.is_builtin, attr.method.__name__)
            for name, attr in server._auth_methods.items()
        },
        sorted(server._handle_hooks),
        server._ehlo_hook_ver,
        sorted(server._smtp_methods),
    )


def test_discovery_matches_stock_aiosmtpd(loop: asyncio.AbstractEventLoop) -> None:
    stock = Stock(Hooks(), loop=loop, auth_exclude_mechanism=["LOGIN"])
    fast = Fast(FastHooks(), loop=loop, auth_exclude_mechanism=["LOGIN"])
    assert discovered(fast) == discovered(stock)
    assert "CUSTOM" in fast._auth_methods and "LOGIN" not in fast._auth_methods
    assert "XFOO" in fast._smtp_methods
    # the hooks are bound to this connection's handler and this connection, not a cached one
    handler = FastHooks()
    second = Fast(handler, loop=loop)
    assert second._handle_hooks["DATA"].__self__ is handler
    assert second._smtp_methods["XFOO"].__self__ is second
    assert second._auth_methods["CUSTOM"].method.__self__ is handler


def test_discovery_runs_once_per_class(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    real = inspect.getmembers

    def counting(obj: object, predicate: object = None) -> list[tuple[str, object]]:
        calls.append(obj)
        return real(obj, predicate)  # type: ignore[arg-type]

    monkeypatch.setattr(inspect, "getmembers", counting)

    class Once(FastSMTP):
        pass

    class OnceHooks(Hooks):
        pass

    smtp_fast.register(OnceHooks)
    for _ in range(20):
        Once(OnceHooks(), loop=loop)
    assert len(calls) == 2  # the connection class and the handler class, once each
    calls.clear()
    for _ in range(3):
        Stock(Hooks(), loop=loop)  # other aiosmtpd users keep the stock, uncached path
    assert len(calls) == 6


def test_an_auth_method_set_on_one_handler_instance_is_still_seen(
    loop: asyncio.AbstractEventLoop,
) -> None:
    handler = FastHooks()

    async def auth_EXTRA(server: SMTP, args: list[str]) -> AuthResult:
        return AuthResult(success=False)

    handler.auth_EXTRA = auth_EXTRA  # type: ignore[attr-defined]
    assert "EXTRA" in Fast(handler, loop=loop)._auth_methods
    assert "EXTRA" not in Fast(FastHooks(), loop=loop)._auth_methods


EXAMPLES = [
    "",
    "<>",
    "<> SIZE=3",
    "<>x",
    "<a@b.c>",
    "<a@b.c> SIZE=10 BODY=8BITMIME",
    "<a.b+c@Ex.COM>  BODY=8BITMIME",
    "<a@b.c>x",
    "<a@b.c>\tSIZE=1 ",
    "<a@b.c> (comment) SIZE=1",
    "<a..b@c>",
    "<.a@b>",
    "<a@[1.2.3.4]>",
    '<"x y"@b.c>',
    "<@route:a@b.c>",
    "a@b.c SIZE=1",
    "<a@b.c.>",
    "<a@-b.c>",
    "<ü@b.c>",
    "<a@b.c",
    "<" + "x" * 70 + "@b.c>",
]


def parsed(parse: object, server: SMTP, arg: str) -> object:
    # the stock parser raises on some malformed input (aiosmtpd then answers 500): so must we
    try:
        return parse(server, arg)  # type: ignore[operator]
    except Exception as exc:
        return type(exc)


@pytest.mark.parametrize("arg", EXAMPLES)
def test_address_parsing_matches_stock(loop: asyncio.AbstractEventLoop, arg: str) -> None:
    fast = Fast(FastHooks(), loop=loop)
    assert parsed(Fast._getaddr, fast, arg) == parsed(SMTP._getaddr, fast, arg)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet='ab.@<>+-_ \t()"[]:,;\\!#x1é', max_size=30))
def test_address_parsing_matches_stock_on_any_input(arg: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        fast = Fast(FastHooks(), loop=loop)
        assert parsed(Fast._getaddr, fast, arg) == parsed(SMTP._getaddr, fast, arg)
    finally:
        loop.close()


# --- DATA read in chunks (sources/smtp/data.py) answers as aiosmtpd's line-by-line loop -------


class Recorder:
    """A handler that records what DATA delivered: the bytes a handler would store."""

    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: object, envelope: object) -> str:
        self.contents.append(envelope.original_content)  # type: ignore[attr-defined]
        return "250 OK"


smtp_fast.register(Recorder)


class StockData(SMTP):
    pass


class FastData(FastSMTP):
    pass


def session(kind: type[SMTP], chunks: list[bytes], **options: object) -> tuple[bytes, list[bytes]]:
    """Everything the server wrote, and what its handler got, for the client bytes in `chunks`
    (each handed to data_received on its own, as TCP may split them)."""

    async def run() -> tuple[bytes, list[bytes]]:
        handler = Recorder()
        server = kind(handler, hostname="mx.example", loop=asyncio.get_running_loop(), **options)
        transport = PeerTransport(("192.0.2.1", 25))
        server.connection_made(transport)
        for chunk in chunks:
            server.data_received(chunk)
            for _ in range(5):
                await asyncio.sleep(0)
        for _ in range(20):
            await asyncio.sleep(0)
        server.connection_lost(None)
        await asyncio.sleep(0)
        return bytes(transport.written), handler.contents

    return asyncio.run(run())


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if data[a:b]]


OPENING = b"EHLO client\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
BODIES = [
    b".\r\n",  # an empty mail
    b"Subject: x\r\n\r\nbody\r\n.\r\n",
    b"..dot-stuffed\r\n.x\r\n...\r\nlast.\r\n.\r\n",
    b"\r\n.\r\n",  # one empty line
    b"bare\nlf\n.\nstill data\r\n.\r\n",
    b"a line ending in a dot.\r\n.\r\n",
    b"cr\r\r\n.\r\n",
    b"x" * 40 + b"\r\n" + b"y" * 70 + b"\r\n.\r\n",  # too much, then a line too long: too much
    b"y" * 70 + b"\r\n" + b"x" * 40 + b"\r\n.\r\n",  # too long first
    b"z" * 63 + b"\r\n.\r\n",  # 65 with its CRLF: too long only when complete
    b"z" * 62 + b"\r\n.\r\n",  # exactly the line limit
    b"z" * 200 + b".\r\n.\r\n",  # a line over the reader's limit that ends in a dot
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("split_at", [[], [1], [3, 7], list(range(0, 400, 5))])
def test_data_reading_matches_stock(body: bytes, split_at: list[int]) -> None:
    sent = OPENING + body + b"MAIL FROM:<c@example.com>\r\nQUIT\r\n"
    chunks = split(sent, [len(OPENING) + c for c in split_at])
    options = {"data_size_limit": 100}
    StockData.line_length_limit = FastData.line_length_limit = 64
    assert session(FastData, chunks, **options) == session(StockData, chunks, **options)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [b".", b"..", b"x", b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", b"\r\n", b"\n", b"\r"]
        ),
        max_size=40,
    ),
    st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    st.sampled_from([0, 60, 150]),
)
def test_data_reading_matches_stock_on_any_input(
    parts: list[bytes], cuts: list[int], size_limit: int
) -> None:
    body = b"".join(parts) + b"\r\n.\r\n"  # whatever comes before, this ends the data
    sent = OPENING + body + b"NOOP\r\nQUIT\r\n"
    chunks = split(sent, [len(OPENING) + c for c in cuts])
    StockData.line_length_limit = FastData.line_length_limit = 48
    options = {"data_size_limit": size_limit}
    assert session(FastData, chunks, **options) == session(StockData, chunks, **options)


@pytest.mark.parametrize(
    "sent",
    [
        b"DATA\r\nQUIT\r\n",  # before EHLO
        b"EHLO client\r\nDATA\r\nQUIT\r\n",  # before RCPT
        b"EHLO client\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA x\r\n",
        b"EHLO client\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nab",
    ],
)
def test_data_refusals_before_the_data_and_a_lost_connection_match_stock(sent: bytes) -> None:
    assert session(FastData, [sent]) == session(StockData, [sent])
