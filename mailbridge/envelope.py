"""What a source knows about a message besides its bytes: the contract between sources and ingest."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Envelope:
    mail_from: str | None = None  # "" is the null sender (bounces); None: unknown (files, IMAP)
    rcpt_tos: tuple[str, ...] = ()
    auth_user: str | None = None  # SMTP AUTH login, when the listener authenticated the client
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class Source:
    kind: str  # smtp | lmtp | imap | imap-sent | file | retry
    name: str = ""  # listener address, mailbox name or file path
    live: bool = True  # live sources are flood-guarded and send acknowledgements/notifications
    agent_authority: bool = False  # a polled Sent folder: its agent mail is trusted
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class Outcome:
    outcome: str  # created | appended | duplicate | ignored | quarantined
    ticket: int | None
    reason: str
    message: int | None = None  # stored message id
    quarantine: int | None = None  # quarantine entry id
    source: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "outcome": self.outcome,
            "ticket": self.ticket,
            "reason": self.reason,
        }
