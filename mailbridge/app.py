"""Builds the core from settings: store, outbound, ingest and ticket actions. The CLI and the daemon share it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailbridge.actions import TicketActions
from mailbridge.clock import Clock, system_clock
from mailbridge.config import Settings
from mailbridge.ingest import Ingestor
from mailbridge.outbound.decide import Outbound
from mailbridge.outbound.webhooks import Subscriptions
from mailbridge.storage import Store, open_store, repo

if TYPE_CHECKING:
    from mailbridge.metrics import Metrics


@dataclass
class App:
    settings: Settings
    store: Store
    outbound: Outbound
    ingestor: Ingestor
    actions: TicketActions
    clock: Clock
    # the daemon's Metrics, when running; sources report poller health to it
    metrics: Metrics | None = None

    @classmethod
    def build(
        cls, settings: Settings, clock: Clock = system_clock, store: Store | None = None
    ) -> App:
        store = store or open_store(
            settings.database.url,
            settings.database.pool_size,
            first_queue=settings.queue_list[0].name,
        )
        outbound = Outbound(settings, clock)
        ingestor = Ingestor(store, settings, clock, outbound)
        app = cls(settings, store, outbound, ingestor, TicketActions(store, clock), clock)
        app.install_webhooks()
        return app

    def install_webhooks(self) -> None:
        """Every event written through this store queues the posts its `[[webhooks]]` want."""
        hooks = self.settings.webhooks
        subscriptions = Subscriptions(hooks, self.reply_to) if hooks else None
        repo.install_webhooks(self.store.sessions, subscriptions)

    def reconfigure(self, settings: Settings) -> None:
        """Take reloaded settings everywhere the core derives state from them."""
        self.ingestor.configure(settings)
        self.outbound.configure(settings)
        self.settings = settings
        self.install_webhooks()

    def reply_to(self, token: str, queue: str | None = None) -> str:
        """The ticket's token address, on its queue's from address (SPEC 7)."""
        tokens = self.settings.addressing.tokens
        base = self.settings.queue_sender(queue)[0] if queue else None
        return tokens.address(token, base)

    def close(self) -> None:
        self.store.close()
