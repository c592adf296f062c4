"""What the FastSMTP hooks save, in CPU time per connection, per MAIL/RCPT argument and per DATA.

    python bench/smtp_hooks.py

Builds mailbridge's handler and connection class as the listener does, and times aiosmtpd's
per-connection setup and its address parsing with and without the hooks (process CPU time,
best of 5, so other load on the machine matters little). DATA: a whole session (EHLO, MAIL,
RCPT, a 2 KB mail of 80-column lines, QUIT) over an in-memory transport, with FastSMTP's
chunked DATA and with aiosmtpd's own line-by-line `smtp_DATA`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiosmtpd.smtp import SMTP

from mailbridge.config import parse_settings
from mailbridge.sources.smtp import aiosmtpd_compat as smtp_fast
from mailbridge.sources.smtp.handler import Handler
from mailbridge.sources.smtp.listener import ListenerConfig

ADDRESSES = ["<customer4711@customer.example> SIZE=2048", "<support+ab12cd@example.com>"]
MAIL = b"Subject: printer\r\n\r\n" + b"".join(b"x" * 78 + b"\r\n" for _ in range(25))
SESSION = (
    b"EHLO client.example\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<support@example.com>\r\n"
    b"DATA\r\n" + MAIL + b".\r\nQUIT\r\n"
)


class Sink(asyncio.Transport):
    """An in-memory transport: the server's replies are dropped, close ends the session."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        super().__init__()
        self.done = done

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 2525) if name == "peername" else default

    def write(self, data: object) -> None:
        pass

    def is_closing(self) -> bool:
        return self.done.done()

    def close(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Taker:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


smtp_fast.register(Taker)


def session_cpu(kind: type[SMTP], n: int) -> float:
    """Best of 5 runs of n whole sessions, microseconds of process CPU per session."""

    async def one() -> None:
        done = asyncio.get_running_loop().create_future()
        server = kind(Taker(), hostname="mx.example.com", loop=asyncio.get_running_loop())
        server.connection_made(Sink(done))
        server.data_received(SESSION)
        await done
        server.connection_lost(None)

    async def many() -> None:
        for _ in range(n):
            await one()

    times = []
    for _ in range(5):
        started = time.process_time()
        asyncio.run(many())
        times.append(time.process_time() - started)
    return min(times) / n * 1e6


def best(fn: object, n: int) -> float:
    """Best of 5 runs of n calls, in microseconds of process CPU per call."""
    times = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(n):
            fn()  # type: ignore[operator]
        times.append(time.process_time() - started)
    return min(times) / n * 1e6


def main() -> int:
    settings = parse_settings('[smtp]\naddresses = ["support@example.com"]\n', "bench.toml")
    handler = Handler(None, ListenerConfig.from_settings(settings))  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()

    class Stock(SMTP):
        pass

    class Fast(smtp_fast.FastSMTP):
        pass

    # the stock figures: the handler's class unregistered, the connection class a plain SMTP
    smtp_fast._fast_types.discard(Handler)
    stock_init = best(lambda: Stock(handler, hostname="mx.example.com", loop=loop), 2000)
    smtp_fast.register(Handler)
    fast_init = best(lambda: Fast(handler, hostname="mx.example.com", loop=loop), 2000)
    conn = Fast(handler, hostname="mx.example.com", loop=loop)
    stock_addr = best(lambda: [SMTP._getaddr(conn, a) for a in ADDRESSES], 5000) / len(ADDRESSES)
    fast_addr = best(lambda: [conn._getaddr(a) for a in ADDRESSES], 5000) / len(ADDRESSES)
    loop.close()

    class LineByLine(smtp_fast.FastSMTP):
        smtp_DATA = SMTP.smtp_DATA  # aiosmtpd's own, one await per line

    class Chunked(smtp_fast.FastSMTP):
        pass

    stock_data = session_cpu(LineByLine, 500)
    fast_data = session_cpu(Chunked, 500)
    print("| per | stock aiosmtpd µs | with FastSMTP µs | ratio |")
    print("|---|---|---|---|")
    print(
        f"| connection setup | {stock_init:.1f} | {fast_init:.1f} | {stock_init / fast_init:.1f}× |"
    )
    print(
        f"| MAIL/RCPT address | {stock_addr:.1f} | {fast_addr:.1f} | {stock_addr / fast_addr:.1f}× |"
    )
    print(
        f"| session with a 2 KB DATA (stock: aiosmtpd's smtp_DATA only) | {stock_data:.1f} | "
        f"{fast_data:.1f} | {stock_data / fast_data:.1f}× |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
