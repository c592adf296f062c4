"""PURE  Charset labels as mail writes them -> Python codecs, and the message's own hint.

Standard library only. Labels seen in real mail that Python does not know, or knows too
narrowly, are mapped (``gb2312`` -> gb18030, ``ks_c_5601-1987`` -> cp949, ...); useless
labels (``us-ascii``, ``unknown-8bit``) map to None, which means "guess". Microsoft's
ISO-2022-JP is decoded via cp932 (`decode_as`).
"""

from __future__ import annotations

import codecs
import re
from functools import lru_cache
from itertools import islice

__all__ = ["charset_hint", "codec_for", "decode_as", "siblings"]

# Charset labels seen in real mail that Python does not know, or knows too narrowly.
_CHARSET_ALIASES = {
    "iso-gb2312": "gb18030",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cn-gb": "gb18030",
    "euc-cn": "gb18030",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "euc-kr": "cp949",
    "x-windows-949": "cp949",
    "big5": "big5hkscs",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "windows-31j": "cp932",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "windows-874": "cp874",
    "tis-620": "cp874",
    "x-mac-cyrillic": "mac-cyrillic",
    "x-mac-roman": "mac-roman",
    "macintosh": "mac-roman",
    "unicode-1-1-utf-7": "utf-7",
}
# Labels that say nothing useful: guess (UTF-8, then the hint, then windows-1252).
_GUESS = frozenset(
    {"", "us-ascii", "ascii", "ansi_x3.4-1968", "x-unknown", "unknown", "unknown-8bit",
     "x-user-defined", "default", "8bit", "binary", "charset"}
)  # fmt: skip
_WINDOWS_CP = re.compile(r"(?:x-)?(?:windows|win|cp|ms)[-_ ]?(\d{3,4})")
_CHARSET_PARAM = re.compile(rb"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]{1,40})", re.I)


@lru_cache(maxsize=256)
def codec_for(charset: str | None) -> str | None:
    """Python text codec for a charset label; None when the label is useless or unknown."""
    label = (charset or "").strip().strip("\"'").lower()
    if label in _GUESS:
        return None
    label = _CHARSET_ALIASES.get(label, label)
    match = _WINDOWS_CP.fullmatch(label)
    if match:
        label = "cp" + match.group(1)
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):  # unknown, or not even a name (NUL inside)
        return None
    return info.name if getattr(info, "_is_text_encoding", True) else None


_MULTIBYTE = frozenset(
    {"gb18030", "gbk", "gb2312", "hz", "big5", "big5hkscs", "cp950", "cp932", "shift_jis",
     "euc_jp", "iso2022_jp", "iso2022_jp_2", "iso2022_jp_ext", "iso2022_kr", "cp949",
     "euc_kr", "johab"}
)  # fmt: skip
# Japanese mail: Microsoft's ISO-2022-JP (NEC and IBM extensions such as circled digits,
# which Python's codec rejects) and 8-bit Shift_JIS or EUC-JP under an ISO-2022-JP label.
_JIS_VIA_CP932 = "x-jis-via-cp932"
_SIBLINGS = {
    "iso2022_jp": (_JIS_VIA_CP932, "cp932", "euc_jp"),
    "iso2022_jp_2": (_JIS_VIA_CP932, "cp932", "euc_jp"),
}
_JIS_ESCAPE = re.compile(rb"\x1b(\$[@B]|\([BJI])")


def _jis_via_cp932(data: bytes) -> str:
    """ISO-2022-JP as Microsoft writes it: JIS X 0208 pairs turned into Shift_JIS, decoded
    as cp932 (which holds the vendor extensions); strict, so a failure moves on."""
    out = bytearray()
    mode = b"(B"
    pos = 0
    for match in [*_JIS_ESCAPE.finditer(data), None]:
        chunk = data[pos : match.start() if match else len(data)]
        if mode[0:1] == b"$":
            if len(chunk) % 2:
                raise UnicodeDecodeError("iso2022_jp", data, pos, pos + len(chunk), "odd")
            for j1, j2 in zip(chunk[::2], chunk[1::2], strict=True):
                s1 = ((j1 - 0x21) >> 1) + 0x81
                s1 += 0x40 if s1 > 0x9F else 0
                s2 = j2 + (0x1F + (j2 >= 0x60) if j1 % 2 else 0x7E)
                out += bytes((s1 & 0xFF, s2 & 0xFF))
        elif mode == b"(I":
            out += bytes(b | 0x80 for b in chunk)
        else:
            out += chunk
        if match:
            mode, pos = match.group(1), match.end()
    return out.decode("cp932")


def charset_hint(data: bytes) -> str | None:
    """The charset the message declares for its text (MIME or HTML meta), a multi-byte one
    first: a strict multi-byte decode that succeeds means something, a single-byte one
    always succeeds. Read from the raw bytes so both parse paths agree."""
    found: list[str] = []
    for match in islice(_CHARSET_PARAM.finditer(data, 0, 262_144), 50):
        codec = codec_for(match.group(1).decode("ascii", "replace"))
        if codec in _MULTIBYTE:
            return codec
        if codec is not None and codec != "utf-8":
            found.append(codec)
    return found[0] if found else None


def siblings(codec: str | None) -> tuple[str, ...]:
    """Codecs a text labelled `codec` is often really written in (tried after it)."""
    return _SIBLINGS.get(codec or "", ())


def decode_as(data: bytes, codec: str) -> str:
    """Strict decode; raises (UnicodeDecodeError, or whatever a codec does) on failure."""
    return _jis_via_cp932(data) if codec == _JIS_VIA_CP932 else data.decode(codec)
