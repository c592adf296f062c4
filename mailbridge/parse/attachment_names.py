"""PURE  File names for attachments: the part's own, sanitised, else one derived from its type.

Standard library only. Parts without a file name get one from what they say about
themselves (Content-Location, Content-ID, Content-Description) or from their type
(``image.jpg``, ``document.html``, ``attachment.bin``), unique within the message
(``image1.jpg``); an attached message is named after its subject (``<subject>.eml``).
Names lose directories, control and bidi characters, and are cut to 255 characters.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Callable
from email.message import Message

from mailbridge.parse.headers import TextDecoder, clean
from mailbridge.parse.mime_payload import UUENCODE, cte, payload_head
from mailbridge.parse.mime_split import raw_payload

__all__ = ["MIMETYPES", "extension", "filename", "sanitize_filename"]

MIMETYPES = mimetypes.MimeTypes(filenames=())  # built-in table only: same names on every host
_EXTENSIONS = {
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
    "text/plain": ".txt",
    "message/delivery-status": ".txt",
    "message/disposition-notification": ".txt",
    "message/feedback-report": ".txt",
    "text/rfc822-headers": ".txt",
    "message/rfc822": ".eml",
    "message/global": ".eml",
    "message/news": ".eml",
    "message/rfc822-headers": ".txt",
    "text/calendar": ".ics",
    "application/pkcs7-signature": ".p7s",
    "application/x-pkcs7-signature": ".p7s",
    "application/pkcs7-mime": ".p7m",
    "application/x-pkcs7-mime": ".p7m",
    "application/pgp-signature": ".asc",
    "application/pgp-encrypted": ".pgp",
    "application/ms-tnef": ".dat",
}
_STEMS = {
    "text/calendar": "calendar",
    "message/delivery-status": "delivery-status",
    "application/pkcs7-signature": "smime",
    "application/x-pkcs7-signature": "smime",
    "application/pkcs7-mime": "smime",
    "application/x-pkcs7-mime": "smime",
    "application/pgp-signature": "signature",
    "application/ms-tnef": "winmail",
}
_MAIN_STEMS = {"image": "image", "video": "video", "audio": "audio", "text": "document"}
# Control characters, zero-width and bidi controls (`\u202e` turns "fdp.exe" into "exe.pdf").
_UNSAFE_NAME = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)
_UU_BEGIN = re.compile(r"\s*begin[ \t]+[0-7]{3,4}[ \t]+([^\r\n]+)")
_FILENAME_LIKE = re.compile(r".+\.[A-Za-z0-9]{2,6}")


def extension(content_type: str) -> str:
    return _EXTENSIONS.get(content_type) or MIMETYPES.guess_extension(content_type) or ".bin"


def sanitize_filename(name: str, keep_slashes: bool = False) -> str:
    """No directories, no control or bidi characters, at most 255 characters."""
    if keep_slashes:
        name = name.replace("/", "_").replace("\\", "_")
    else:
        name = re.split(r"[/\\]", name)[-1]
    name = _UNSAFE_NAME.sub("", name).strip()
    if not name.strip("."):
        return ""
    if len(name) > 255:
        stem, dot, ext = name.rpartition(".")
        name = stem[: 254 - len(ext)] + dot + ext if dot and len(ext) < 16 else name[:255]
    return name


def filename(part: Message, ctype: str, text: TextDecoder, unique: Callable[[str], str]) -> str:
    """The part's own name, else one derived from what the part says about itself;
    generated names go through `unique`."""
    given = (
        text.param(part, "filename", "content-disposition"),
        text.param(part, "name"),
    )
    for value in given:
        if value and (name := sanitize_filename(value)):
            return name
    description = clean(text.header(str(part.get("content-description") or "")))
    if ctype in ("message/rfc822", "message/global", "message/news"):
        inner = raw_payload(part)
        subject = ""
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            subject = clean(text.header(str(inner[0].get("subject") or "")))
        stem = sanitize_filename(subject or description, keep_slashes=True) or "message"
        return unique(stem + ".eml")
    if cte(part) in UUENCODE:
        match = _UU_BEGIN.match(payload_head(part))
        if match and (name := sanitize_filename(match.group(1).strip())):
            return name
    location = str(part.get("content-location") or "").split("?", 1)[0].strip()
    if location and (name := sanitize_filename(location)):
        return name
    cid = clean(str(part.get("content-id") or "")).strip("<>")
    local = cid.split("@", 1)[0] if "@" in cid else ""
    if _FILENAME_LIKE.fullmatch(local) and (name := sanitize_filename(local)):
        return name
    if description and (name := sanitize_filename(description + extension(ctype))):
        return unique(name)
    known = _STEMS.get(ctype) or _MAIN_STEMS.get(ctype.split("/", 1)[0])
    if known is None and local and (name := sanitize_filename(local)):
        return name
    return unique((known or "attachment") + extension(ctype))
