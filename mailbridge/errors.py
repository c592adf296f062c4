"""The exception hierarchy. Library errors are wrapped where they enter (`raise X from exc`)."""

from __future__ import annotations


class MailbridgeError(Exception):
    """Base of every error mailbridge raises on purpose."""


class ConfigError(MailbridgeError):
    """The configuration is invalid; `problems` holds one `file:line: key: message` per error."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ParseError(MailbridgeError):
    """A message could not be parsed at all; it is quarantined with this reason."""


class IllegalTransition(MailbridgeError):
    """The lifecycle table has no entry for this event in this status; nothing changes."""

    def __init__(self, status: str, event: str, why: str | None = None) -> None:
        self.status = status
        self.event = event
        super().__init__(why or f"cannot {event} a ticket that is {status}")


class NotFound(MailbridgeError):
    """A ticket, message or quarantine entry asked for does not exist."""


class Refused(MailbridgeError):
    """An action was refused; the message says why (CLI exit 1)."""


class StorageUnavailable(MailbridgeError):
    """The raw bytes could not even be stored: the sender must retry (SMTP 451)."""


class DuplicateKey(MailbridgeError):
    """A row's unique key is taken: another node, or an earlier mail of the batch, stored it first."""


class ImapError(MailbridgeError):
    """An IMAP account failed (connection, login, protocol); the poller backs off and retries."""


class DeliveryError(MailbridgeError):
    """The smarthost refused or could not take an outbound message."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent
