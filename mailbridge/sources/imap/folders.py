"""Folder names: how a folder named in the config is spelled on one IMAP server.

Config joins levels with `/` and names personal folders without a prefix; servers differ in both
(RFC 2342 namespaces). Pure: the session asks the server, these functions decide the spellings.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Namespace:
    """The personal namespace (RFC 2342): where the user's folders live and how levels are joined."""

    prefix: str  # "" on most servers; "INBOX." or "INBOX/" on Cyrus and Courier
    separator: str | None  # None: a flat server without hierarchy


def folder_spellings(name: str, namespace: Namespace) -> list[str]:
    """The names a configured folder may have on this server, as written first.

    Config joins levels with `/`. A server may use another separator, and may keep personal
    folders under a prefix, so `Archive/2026` may be `Archive/2026`, `Archive.2026` or
    `INBOX.Archive.2026` there. The last spelling is where a new folder belongs.
    """
    sep = namespace.separator
    local = name.replace("/", sep) if sep and sep != "/" else name
    found = [name, local]
    if namespace.prefix and not _under(local, namespace.prefix):
        found.append(namespace.prefix + local)
    return list(dict.fromkeys(found))


def _under(name: str, prefix: str) -> bool:
    if name.upper() == "INBOX" or name.startswith(prefix):
        return True  # INBOX is INBOX in every namespace
    # the name INBOX is case-insensitive (RFC 3501 5.1), so `inbox.Done` is under `INBOX.`
    return prefix[:5].upper() == "INBOX" and name.upper().startswith(prefix.upper())


def same_folder(listed: str, wanted: str) -> bool:
    return listed == wanted or listed.upper() == wanted.upper() == "INBOX"
