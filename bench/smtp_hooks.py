"""What the FastSMTP hooks save, in CPU time per connection and per MAIL/RCPT argument.

    python bench/smtp_hooks.py

Builds mailbridge's handler and connection class as the listener does, and times aiosmtpd's
per-connection setup and its address parsing with and without the hooks (process CPU time,
best of 5, so other load on the machine matters little).
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
    print("| per | stock aiosmtpd µs | with FastSMTP µs | ratio |")
    print("|---|---|---|---|")
    print(
        f"| connection setup | {stock_init:.1f} | {fast_init:.1f} | {stock_init / fast_init:.1f}× |"
    )
    print(
        f"| MAIL/RCPT address | {stock_addr:.1f} | {fast_addr:.1f} | {stock_addr / fast_addr:.1f}× |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
