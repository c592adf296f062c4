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
