"""Where each key sits in a TOML text: key paths like `("imap", 1, "port")` mapped to lines.

tomllib reports no positions, so the loader finds them here to name `file:line` in errors.
Only run on text tomllib accepted, which keeps this scanner simple.
"""

from __future__ import annotations

import re
from bisect import bisect_right

from mailbridge.config.types import Loc

_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_KEY = rf"{_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART})*"
_HEADER = re.compile(rf"(\[\[?)[ \t]*({_KEY})[ \t]*\]\]?")
_KEYVAL = re.compile(rf"({_KEY})[ \t]*=")
_STRING = re.compile(
    r'"""[\s\S]*?"""(?!")|\'\'\'[\s\S]*?\'\'\'(?!\')|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\''
)
_SCALAR = re.compile(r"[^\s,\]}#]+")
_SPACE = re.compile(r"\s*")


def _parts(key: str) -> tuple[str, ...]:
    return tuple(p[1:-1] if p[0] in "\"'" else p for p in re.findall(_KEY_PART, key))


def locate(text: str) -> dict[Loc, int]:
    """Map key paths (`("imap", 1, "port")`) to 1-based lines; only run on text tomllib accepted."""
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    found: dict[Loc, int] = {}
    counts: dict[Loc, int] = {}
    table: Loc = ()

    def expand(parts: tuple[str, ...]) -> Loc:
        # `[imap.x]` after `[[imap]]` belongs to the latest imap entry
        path: Loc = ()
        for part in parts:
            path += (part,)
            if path in counts:
                path += (counts[path] - 1,)
        return path

    pos = 0
    while (pos := _SPACE.match(text, pos).end()) < len(text):  # type: ignore[union-attr]
        line = bisect_right(starts, pos)
        if header := _HEADER.match(text, pos):
            parts = _parts(header[2])
            if header[1] == "[[":
                array = (*expand(parts[:-1]), parts[-1])
                counts[array] = counts.get(array, 0) + 1
                found.setdefault(array, line)
                table = (*array, counts[array] - 1)
            else:
                table = expand(parts)
            found.setdefault(table, line)
            pos = header.end()
        elif keyval := _KEYVAL.match(text, pos):
            path = table + _parts(keyval[1])
            for end in range(len(table) + 1, len(path)):
                found.setdefault(path[:end], line)
            found[path] = line
            pos = _skip_value(text, keyval.end(), path, found, starts)
        else:  # a comment, or the rest of a line already consumed
            end = text.find("\n", pos)
            pos = len(text) if end < 0 else end + 1
    return found


def _skip_value(
    text: str,
    pos: int,
    path: Loc,
    found: dict[Loc, int],
    starts: list[int],
) -> int:
    """Step over one value (arrays may span lines), noting the line of each top-level array item."""
    stack: list[str] = []
    item, expect_item = 0, False
    while pos < len(text):
        ch = text[pos]
        if ch in " \t\r\n":
            if ch == "\n" and not stack:
                return pos
            pos += 1
            continue
        if ch == "#":
            end = text.find("\n", pos)
            pos = len(text) if end < 0 else end
            continue
        if stack == ["["] and expect_item and ch not in ",]":
            found[(*path, item)] = bisect_right(starts, pos)
            item, expect_item = item + 1, False
        if ch in "[{":
            stack.append(ch)
            expect_item = stack == ["["]
            pos += 1
        elif ch in "]}":
            stack.pop()
            pos += 1
        elif ch == ",":
            expect_item = stack == ["["]
            pos += 1
        else:
            token = _STRING.match(text, pos) or _SCALAR.match(text, pos)
            pos = token.end() if token else pos + 1
        if not stack:
            return pos
    return pos
