"""Pure text helpers for outgoing mail: safe header values, reply subjects, addresses, templates,
and taking our notification footer (with the quote around it) out of an agent's reply.

Header values go through the standard library's email API, which refuses CR/LF in a value; we
also replace line breaks and other control characters ourselves first, so a subject or display
name taken from customer mail can never start a header of its own.
"""

from __future__ import annotations

import functools
import re
import string
from email.headerregistry import Address
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"

# The footer of notifications. Agents answer above it; `strip_footer` finds this line again,
# quoted or not, and removes the quoted notification with it.
FOOTER_MARK = "mailbridge: reply above this line to answer the customer."
FOOTER_COMMANDS = "Commands on the first lines: #resolve #close #postpone 3d #note"
_MARK = re.compile(r"^mailbridge: reply above this line\b", re.IGNORECASE)
_QUOTED = re.compile(r"^\s*>")
_UNQUOTE = re.compile(r"^(?:\s*>)+ ?")
_ATTRIBUTION_START = re.compile(
    r"^\s*(on|am|le|el|il|op|den|på|em|w dniu)\b|-----\s*original message", re.IGNORECASE
)
_WROTE = re.compile(
    r"\b(wrote|schrieb|a écrit|escribió|scrisse|schreef|skrev|napisał|escreveu)\s*:\s*$",
    re.IGNORECASE,
)
_OUTLOOK_SEPARATOR = re.compile(
    r"^\s*(-{3,}\s*(original message|ursprüngliche nachricht|message d'origine)\s*-{3,}|_{10,})\s*$",
    re.IGNORECASE,
)
_OUTLOOK_FROM = re.compile(r"^\s*(from|von|de|van):\s", re.IGNORECASE)
_OUTLOOK_NEXT = re.compile(r"^\s*(sent|date|gesendet|datum|envoyé|to|an|à):\s", re.IGNORECASE)
_REPLY_PREFIX = re.compile(r"^\s*((re|aw|sv|antw|fwd?|wg)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
# line breaks of every kind (str.splitlines breaks on these) and other control characters
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]+")
_SPACES = re.compile(r"\s{2,}")
# an RFC 5322 dot-atom: what the address parser takes apart without changing anything
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")


def header_safe(value: str, limit: int = 900) -> str:
    """One line: CR, LF and other control characters become a space; bounded length."""
    return _SPACES.sub(" ", _UNSAFE.sub(" ", value)).strip()[:limit]


def reply_subject(subject: str) -> str:
    """`Re: <subject>` without piling up `Re: AW: Re:` prefixes."""
    base = _REPLY_PREFIX.sub("", header_safe(subject))
    return f"Re: {base}" if base else "Re: your message"


@functools.lru_cache(maxsize=4096)
def mailbox(name: str, address: str) -> Address | None:
    """A header address, or None when the address cannot be written safely in a 7-bit header.

    Cached (Address is immutable): the same customers and agents come back all the time."""
    address = header_safe(address)
    if not address.isascii() or "@" not in address or any(c in address for c in ' ,;<>"'):
        return None
    local, _, domain = address.rpartition("@")
    if _DOT_ATOM.match(local) and _DOT_ATOM.match(domain):  # the common case, without parsing
        return Address(display_name=header_safe(name, 200), username=local, domain=domain)
    try:
        box = Address(display_name=header_safe(name, 200), addr_spec=address)
    except Exception:  # the email package raises several kinds for malformed addresses
        return None
    # the parser drops comments and repairs quoting: send only to exactly the address we hold
    return box if box.addr_spec.lower() == address.lower() else None


def render(template: str, values: dict[str, object]) -> tuple[str | None, str]:
    """`string.Template` text; an optional first line `Subject: ...` gives the subject."""
    text = string.Template(template).safe_substitute({k: str(v) for k, v in values.items()})
    first, _, rest = text.partition("\n")
    if first.lower().startswith("subject:"):
        return first[8:].strip(), rest.lstrip("\n")
    return None, text


@functools.cache
def template(name: str) -> str:
    """A bundled template (`templates/<name>.txt`), read once."""
    return (TEMPLATES / f"{name}.txt").read_text("utf-8")


# --- the notification footer in agents' replies --------------------------------------------


def strip_footer(text: str) -> str:
    """Remove our notification footer from an agent's reply, and the quoted notification with it.

    Quoted (`> ` lines): the whole quote block holding the footer goes, with the attribution line
    above it ("On ... wrote:"). Unquoted (Outlook's "-----Original Message-----" or a From:/Sent:
    block): everything from that separator on. Otherwise only the footer lines. The customer has
    their own mail already, and a commands-only reply must not relay a bare quote.
    """
    lines = text.splitlines()
    marks = [i for i, line in enumerate(lines) if _MARK.match(_UNQUOTE.sub("", line).strip())]
    if not marks:
        return text
    for i in reversed(marks):
        lines = _cut_quote(lines, i) if _QUOTED.match(lines[i]) else _cut_unquoted(lines, i)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines).strip("\n")


def _cut_quote(lines: list[str], i: int) -> list[str]:
    start, end = i, i
    while start > 0 and _QUOTED.match(lines[start - 1]):
        start -= 1
    while end + 1 < len(lines) and _QUOTED.match(lines[end + 1]):
        end += 1
    return lines[: _attribution_start(lines, start)] + lines[end + 1 :]


def _attribution_start(lines: list[str], quote_start: int) -> int:
    """Where the "On <date>, <someone> wrote:" line(s) above a quote begin (or quote_start)."""
    j = quote_start - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0 or not lines[j].rstrip().endswith(":"):
        return quote_start
    # mail clients wrap a long attribution; look up to two lines further for its beginning
    for k in range(j, max(j - 3, -1), -1):
        if not lines[k].strip():
            break
        if _ATTRIBUTION_START.search(lines[k]):
            return k
    return j


def _cut_unquoted(lines: list[str], i: int) -> list[str]:
    # the nearest "-----Original Message-----" above the footer, else the nearest From:/Sent: block
    for j in range(i - 1, -1, -1):
        if _OUTLOOK_SEPARATOR.match(lines[j]):
            return lines[:j]
    for j in range(i - 1, -1, -1):
        if _OUTLOOK_FROM.match(lines[j]) and any(
            _OUTLOOK_NEXT.match(n) for n in lines[j + 1 : j + 4]
        ):
            return lines[:j]
    # an HTML reply turned into text loses the `>` of its quote, but keeps "On ... wrote:"
    for j in range(i - 1, -1, -1):
        if _ATTRIBUTION_START.search(lines[j]) and any(_WROTE.search(n) for n in lines[j : j + 3]):
            return lines[:j]
    start = i - 1 if i > 0 and lines[i - 1].strip() == "--" else i
    end = i
    while end + 1 < len(lines) and lines[end + 1].strip():
        end += 1
    return lines[:start] + lines[end + 1 :]
