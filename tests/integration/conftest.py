"""Fixtures of the integration tests that drive the core with an aiosmtpd sink as smarthost."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mailbridge.clock import FixedClock
from tests.desk import ACK, CONFIG, Desk, MakeDesk
from tests.fixtures.smtp_sink import SmtpSink


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink.running() as running:
        yield running


@pytest.fixture
def make_desk(make_app: Callable[..., Any], sqlite_url: str, clock: FixedClock) -> MakeDesk:
    def make(
        sink: SmtpSink,
        url: str | None = None,
        tickets: str = ACK,
        agents: str = "",
        outbound: str | None = None,
        smtp: str = "",
        **sender: Any,
    ) -> Desk:
        text = CONFIG.format(
            smtp=smtp,
            url=url or sqlite_url,
            tickets=tickets,
            agents=agents,
            outbound=outbound if outbound is not None else sink.outbound_toml(),
        )
        return Desk(make_app(url or sqlite_url, base=text), sink, clock, **sender)

    return make


@pytest.fixture
def desk(make_desk: MakeDesk, sink: SmtpSink) -> Desk:
    return make_desk(sink)
