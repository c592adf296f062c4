"""What the daemon runs: anything with async start/stop (listener, pollers, scheduler, outbox sender)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mailbridge.config import Settings


class Component(Protocol):
    name: str

    async def start(self) -> None:
        """Begin work; return once running (listening, first connection attempted, ...)."""

    async def stop(self) -> None:
        """Finish in-flight work within a bounded wait, then release resources."""

    def reload(self, settings: Settings) -> None:
        """Take new settings (SIGHUP); components that hold none may ignore it."""
