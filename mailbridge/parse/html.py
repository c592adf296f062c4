"""PURE  HTML -> plain text for message bodies (standard library only).

Regex based on purpose: `html.parser` is several times slower and mail HTML is
rarely well formed anyway. The output keeps paragraphs and line breaks, drops
scripts, styles, comments and the document head, and decodes entities.
"""

from __future__ import annotations

import html
import re

__all__ = ["html_to_text"]

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)|<!\[CDATA\[.*?\]\]>|<![^>]*>|<\?[^>]*>", re.S)
_DROPPED = re.compile(r"<(script|style|head|title|xml|template)\b[^>]*>.*?</\1\s*>", re.I | re.S)
_WHITESPACE = re.compile(r"[ \t\r\n\f\v]+")
_BREAK = re.compile(r"<br\b[^>]*>", re.I)
_PARAGRAPH = re.compile(
    r"</?(?:p|div|h[1-6]|blockquote|pre|table|ul|ol|dl|section|article|header|footer|"
    r"address|hr|center|form|fieldset)\b[^>]*>",
    re.I,
)
_LINE = re.compile(r"<(?:tr|li|dt|dd|caption)\b[^>]*>", re.I)  # opening tags only
_CELL = re.compile(r"</t[dh]\s*>", re.I)
_TAG = re.compile(r"</?[A-Za-z][^>]*>?")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_RUN = re.compile(r"\n{3,}")


def html_to_text(markup: str) -> str:
    """Readable text from an HTML body: tags stripped, blocks become paragraphs."""
    text = _COMMENT.sub(" ", markup)
    text = _DROPPED.sub(" ", text)
    text = _WHITESPACE.sub(" ", text)  # HTML: source line breaks are just spaces
    text = _BREAK.sub("\n", text)
    text = _PARAGRAPH.sub("\n\n", text)
    text = _LINE.sub("\n", text)
    text = _CELL.sub("\t", text)
    text = _TAG.sub("", text)
    text = html.unescape(text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_RUN.sub("\n\n", "\n".join(lines)).strip()
