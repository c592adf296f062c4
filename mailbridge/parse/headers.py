"""PURE  Header and body text: charsets, RFC 2047 encoded-words, RFC 2231 parameters, addresses.

Standard library only. `TextDecoder` decodes for one message and knows its charset hint
(read from the raw bytes only when a decode needs it). Raw 8-bit header bytes and text in a
wrong or unknown charset are decoded strictly with the declared charset, then UTF-8, then
the hint, and finally leniently.

An RFC 2047 encoded-word inside an address (``=?utf-8?Q?agent?=@example.com``) is forbidden
(RFC 2047 section 5) and a spoofing trick: decoding it would turn a mailbox nobody checked
into ``agent@example.com``. The address is kept exactly as written and the defect
``EncodedWordInAddress`` is recorded.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Iterator
from email.message import Message
from email.utils import getaddresses

from mailbridge.parse.charsets import charset_hint, codec_for, decode_as, siblings
from mailbridge.parse.result import Address

__all__ = ["TextDecoder", "b64decode_lenient", "clean", "unfold"]

# An encoded-word is `=?charset?B|Q?text?=`: the text runs to the first `?=`, at most
# `_MAX_WORD` characters, no line break. One regex for the whole word (`.{0,4000}?` from every
# `=?`) rescans up to 4000 characters from each start: ~5 us per byte of a header full of
# `=?a?q? ` that never closes. `encoded_words` matches the same words in linear time: a
# regex finds the bounded `=?charset?X?` head, and `str.find` the end, remembered while the
# heads move forward, so no character is scanned for `?=` or a line break twice.
_WORD_HEAD = re.compile(r"=\?([^?\s]{1,75})\?([bBqQ])\?")
_MAX_WORD = 4000
_PLACEHOLDER = re.compile("\x01(\\d+)\x01")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]+")
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
# A UTF-8 sequence cut short near the end (a truncated header), then a little ASCII.
_CUT_UTF8 = re.compile(rb"[\xc2-\xf4][\x80-\xbf]{0,2}([\x00-\x7f]{0,8})\Z")


class _Scan:
    """`text.find(needle, pos)` for positions that only grow: each character scanned once."""

    __slots__ = ("_found", "_from", "_needle", "_text")

    def __init__(self, text: str, needle: str) -> None:
        self._text, self._needle = text, needle
        self._from = self._found = -1

    def next(self, pos: int) -> int:
        """Where `needle` next occurs at or after `pos`, or -1."""
        if self._from == -1 or pos < self._from or -1 != self._found < pos:
            self._from, self._found = pos, self._text.find(self._needle, pos)
        return self._found


def encoded_words(text: str) -> Iterator[tuple[int, int, str, str, str]]:
    """(start, end, charset, encoding, encoded text) of each RFC 2047 word, left to right,
    exactly as `re.finditer` of `=\\?([^?\\s]{1,75})\\?([bBqQ])\\?(.{0,4000}?)\\?=` would
    find them, in time linear in `len(text)`."""
    ends, breaks = _Scan(text, "?="), _Scan(text, "\n")
    pos = 0
    while (head := _WORD_HEAD.search(text, pos)) is not None:
        body = head.end()
        end = ends.next(body)
        if end == -1:
            return  # no `?=` anywhere further on: no word can close
        newline = breaks.next(body)
        if end - body <= _MAX_WORD and (newline == -1 or newline > end):
            yield head.start(), end + 2, head.group(1), head.group(2), text[body:end]
            pos = end + 2
        else:
            pos = head.start() + 1


def has_encoded_word(text: str) -> bool:
    return "=?" in text and next(encoded_words(text), None) is not None


def clean(text: str) -> str:
    """One line for display: control characters become spaces; stripped."""
    return _CONTROL.sub(" ", text).strip()


def unfold(value: str) -> str:
    return value.replace("\r", "").replace("\n", "") if "\n" in value or "\r" in value else value


def b64decode_lenient(data: bytes) -> bytes:
    """Lenient base64: junk ignored, padding repaired, a dangling sixth bit dropped."""
    compact = _B64_JUNK.sub(b"", data)
    compact = compact[: len(compact) - (len(compact) % 4 == 1)]
    return binascii.a2b_base64(compact + b"=" * (-len(compact) % 4))


class TextDecoder:
    """Decodes header and body text for one message, knowing its charset hint (read from
    the raw message only when a decode needs it)."""

    def __init__(self, hint: str | None = None, raw: bytes | None = None) -> None:
        self._hint = codec_for(hint)
        self._raw = raw

    @property
    def hint(self) -> str | None:
        if self._raw is not None:
            raw, self._raw = self._raw, None
            try:
                self._hint = charset_hint(raw)
            except Exception:  # a hint is a nicety
                self._hint = None
        return self._hint

    def bytes(self, data: bytes, charset: str | None) -> str:
        """Strictly: UTF-8 first for 8-bit data (text that validates as UTF-8 almost surely
        is; so does truncated UTF-8), then the declared charset and its known
        mislabellings, or, with no usable declaration, the message's hint; else leniently
        (declared charset or windows-1252). Undeclared ISO-2022 escapes are honoured."""
        declared = codec_for(charset)
        if declared is None and b"\x1b" in data:
            declared = "iso2022_jp_2"
        elif declared is None and data.isascii():
            return data.decode("ascii")
        utf8_first = not data.isascii() and not (declared or "").startswith(("utf_16", "utf_32"))
        if utf8_first:
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError as exc:
                cut = _CUT_UTF8.match(data, exc.start)
                head = data[: exc.start].decode("utf-8") if cut else ""
                if cut and exc.start - len(head) >= 2:  # UTF-8 whose last character was cut
                    return head + "\ufffd" + cut.group(1).decode("ascii")
        for codec in self._candidates(declared, utf8_first):
            if codec is not None:
                try:
                    return decode_as(data, codec)
                except Exception:  # UnicodeDecodeError, or a codec misbehaving
                    continue
        try:
            return data.decode(declared or "cp1252", "replace")
        except Exception:
            return data.decode("cp1252", "replace")

    def _candidates(self, declared: str | None, utf8_tried: bool) -> Iterator[str | None]:
        yield declared
        yield from siblings(declared)
        if not utf8_tried:
            yield "utf-8"
        if declared is None:  # only now is the message's own declaration worth reading
            hint = self.hint
            yield hint
            yield from siblings(hint)

    def recover(self, value: str) -> str:
        """Raw 8-bit bytes (surrogate-escaped by the parser) decoded to text."""
        if value.isascii():
            return self.bytes(value.encode("ascii"), None) if "\x1b" in value else value
        try:
            raw = value.encode("ascii", "surrogateescape")
        except UnicodeEncodeError:  # already text
            return value
        return self.bytes(raw, None)

    def fix_8bit_headers(self, parts: Iterable[Message]) -> None:
        """Decode raw 8-bit header values in place so the stdlib accessors see text.

        compat32 hands such values out as `Header` objects whose bytes are already lost
        (U+FFFD); `_headers` is the list behind `raw_items()`, rewritten in order.
        """
        for part in parts:
            headers = getattr(part, "_headers", None)
            if isinstance(headers, list) and not all(
                isinstance(v, str) and v.isascii() for _, v in headers
            ):
                fixed = [(n, self.recover(v) if isinstance(v, str) else v) for n, v in headers]
                part._headers = fixed  # type: ignore[attr-defined]  # stdlib-private header list

    def header(self, value: str) -> str:
        """Unfolded text with RFC 2047 encoded-words decoded (adjacent words joined)."""
        text = unfold(self.recover(value))
        if "=?" not in text:
            return text
        out: list[str] = []
        pending: tuple[str, bytearray] | None = None  # one charset's bytes decode together
        pos = 0
        for start, end, label, encoding, encoded in encoded_words(text):
            gap = text[pos:start]
            if gap and not (pending and gap.isspace()):
                if pending:
                    out.append(self.bytes(bytes(pending[1]), pending[0]))
                    pending = None
                out.append(gap)
            charset = label.split("*", 1)[0].lower()
            if encoding in "qQ":
                raw = binascii.a2b_qp(encoded.encode("utf-8", "surrogatepass"), header=True)
            else:
                raw = b64decode_lenient(encoded.encode("ascii", "ignore"))
            if pending and pending[0] == charset:
                pending[1].extend(raw)
            else:
                if pending:
                    out.append(self.bytes(bytes(pending[1]), pending[0]))
                pending = (charset, bytearray(raw))
            pos = end
        if pending:
            out.append(self.bytes(bytes(pending[1]), pending[0]))
        out.append(text[pos:])
        return "".join(out)

    def addresses(self, values: list[str], defects: list[str]) -> tuple[Address, ...]:
        """Addresses of one or more headers; encoded-words are kept whole while splitting."""
        text = ", ".join(unfold(self.recover(value)) for value in values)
        words: list[str] = []

        def unhide(value: str) -> str:
            if not words:
                return value
            return _PLACEHOLDER.sub(
                lambda m: words[int(m.group(1))] if int(m.group(1)) < len(words) else "", value
            )

        if "=?" in text:  # an encoded-word may hide ',' or '<' from the address parser
            hidden: list[str] = []
            pos = 0
            for start, end, *_ in encoded_words(text):
                hidden += (text[pos:start], f"\x01{len(words)}\x01")
                words.append(text[start:end])
                pos = end
            text = "".join(hidden) + text[pos:] if words else text
        found: list[Address] = []
        for name, addr in getaddresses([text]):
            addr = _CONTROL.sub("", unhide(addr)).strip()
            if not addr:
                continue
            if has_encoded_word(addr):
                defects.append("EncodedWordInAddress")
            name = clean(self.header(unhide(name)))
            if len(name) > 1 and name[0] == name[-1] == "'":  # Outlook's 'Name' <addr>
                name = name[1:-1].strip()
            found.append(Address(name=name, addr=addr))
        return tuple(found)

    def param(self, part: Message, name: str, header: str = "content-type") -> str | None:
        """A MIME parameter with RFC 2231 (charset, continuations) and RFC 2047 decoded."""
        value = part.get_param(name, None, header)
        if value is None:
            return None
        if isinstance(value, tuple):  # RFC 2231: (charset, language, one char per byte)
            charset, _language, chars = value
            return self.bytes(str(chars).encode("latin-1", "replace"), charset)
        return self.header(str(value).strip())
