"""How a configured folder name is spelled on servers with other separators and namespaces."""

from __future__ import annotations

import pytest

from mailbridge.sources.imap.folders import Namespace, folder_spellings

PLAIN = Namespace("", "/")  # Dovecot, Gmail
COURIER = Namespace("INBOX.", ".")  # Courier, Cyrus with the default separator
CYRUS = Namespace("INBOX/", "/")  # Cyrus with unixhierarchysep


@pytest.mark.parametrize(
    ("name", "namespace", "spellings"),
    [
        ("Processed", PLAIN, ["Processed"]),
        ("Archive/2026", PLAIN, ["Archive/2026"]),
        ("Processed", CYRUS, ["Processed", "INBOX/Processed"]),
        ("Processed", COURIER, ["Processed", "INBOX.Processed"]),
        # written with `/`, translated to the server's separator
        ("INBOX/Processed", COURIER, ["INBOX/Processed", "INBOX.Processed"]),
        ("Archive/2026", COURIER, ["Archive/2026", "Archive.2026", "INBOX.Archive.2026"]),
        ("INBOX/Processed", CYRUS, ["INBOX/Processed"]),
        # INBOX is INBOX in every namespace, in any case
        ("INBOX", CYRUS, ["INBOX"]),
        ("inbox", COURIER, ["inbox"]),
        ("inbox.Done", COURIER, ["inbox.Done"]),
        # a flat server (NIL separator) takes names as they are
        ("Archive/2026", Namespace("", None), ["Archive/2026"]),
    ],
)
def test_spellings_as_written_first_and_where_a_new_folder_belongs_last(
    name: str, namespace: Namespace, spellings: list[str]
) -> None:
    assert folder_spellings(name, namespace) == spellings
