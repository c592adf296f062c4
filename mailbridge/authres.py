"""Authentication-Results (RFC 8601): the parser, and the one decision agent authority takes from it.

PURE. The header is read by the RFC grammar after comments are removed, so `;` or `=` inside a
comment or a quoted string never splits a result. The lexer makes one pass over the text (no
regular expression backtracks, no string is copied per token), so a header of megabytes costs
milliseconds. The `authres` package on PyPI was measured first: it copies the remaining text at
every token (a 224 KB header took 12 s) and recurses per nested comment.

Only the topmost header that carries a trusted authserv-id counts (section 5: the border MTA adds
its own on top and removes any that claim its id from outside); whatever lies below it was
written by somebody else and is ignored, a forged pass included.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

# RFC 2045 tspecials, whitespace and the comment/quote openers end a token; "." does not, so
# dot-atoms and domains come out whole where the grammar allows no CFWS inside them
_SPECIALS = frozenset('()<>@,;:\\"/[]?=')
_SPACE = frozenset(" \t\r\n")


class AuthResError(ValueError):
    """The header does not follow the RFC 8601 grammar."""


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # word | quoted | one of _SPECIALS
    text: str
    glued: bool  # no whitespace or comment between this token and the previous one


def _lex(text: str) -> list[_Token]:
    return list(_tokens(text))


def _tokens(text: str) -> Iterator[_Token]:
    i, n = 0, len(text)
    glued = True
    while i < n:
        c = text[i]
        if c in _SPACE:
            glued = False
            i += 1
        elif c == "(":
            depth = 0
            while i < n:
                c = text[i]
                if c == "\\":
                    i += 2
                    continue
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            if depth:
                raise AuthResError("unterminated comment")
            glued = False
            i += 1
        elif c == '"':
            out: list[str] = []
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                out.append(text[i])
                i += 1
            if i >= n:
                raise AuthResError("unterminated quoted string")
            i += 1
            yield _Token("quoted", "".join(out), glued)
            glued = True
        elif c == ")":
            raise AuthResError("unbalanced ')'")
        elif c in _SPECIALS:
            yield _Token(c, c, glued)
            glued = True
            i += 1
        else:
            start = i
            while i < n and text[i] not in _SPECIALS and text[i] not in _SPACE and text[i] != "(":
                i += 1
            yield _Token("word", text[start:i], glued)
            glued = True


@dataclass(frozen=True, slots=True)
class Result:
    method: str  # lowercase: dmarc, dkim, spf, ...
    result: str  # lowercase: pass, fail, none, ...
    properties: tuple[tuple[str, str], ...] = ()  # ("header.from", "example.com"), keys lowercase
    complete: bool = True  # False: something after method=result did not parse

    def prop(self, name: str) -> str | None:
        for key, value in self.properties:
            if key == name:
                return value
        return None

    def names(self, name: str, domain: str) -> bool:
        """Whether property `name` is present and every instance of it is `domain`."""
        values = [value.lower() for key, value in self.properties if key == name]
        return bool(values) and all(value == domain for value in values)


@dataclass(frozen=True, slots=True)
class Header:
    authserv_id: str  # lowercase
    results: tuple[Result, ...] = field(default=())


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str) -> _Token:
        token = self.peek()
        if token is None or token.kind != kind:
            found = token.text if token else "end of header"
            raise AuthResError(f"expected {kind!r}, found {found!r}")
        self.pos += 1
        return token

    def value(self) -> str:
        """A token, quoted string, dot-atom or [local-part] "@" domain: glued pieces joined."""
        first = self.peek()
        if first is None or first.kind not in ("word", "quoted", "@"):
            raise AuthResError("expected a value")
        parts = [first.text]
        self.pos += 1
        while (token := self.peek()) is not None and token.glued and token.kind in ("word", "@"):
            parts.append(token.text)
            self.pos += 1
        return "".join(parts)

    def skip_result(self) -> None:
        while (token := self.peek()) is not None and token.kind != ";":
            self.pos += 1

    def header(self) -> Header:
        authserv_id = self.value().lower()
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.isdigit():
            if token.text != "1":
                raise AuthResError(f"unsupported version {token.text}")
            self.pos += 1
        results: list[Result] = []
        self.take(";")
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.lower() == "none":
            self.pos += 1
            if self.peek() is not None:
                raise AuthResError("'none' must be the only result")
            return Header(authserv_id)
        while True:
            results.append(self.result())
            if self.peek() is None:
                break
            self.take(";")
            if self.peek() is None:  # a trailing ";" is common and harmless
                break
        return Header(authserv_id, tuple(results))

    def result(self) -> Result:
        method = self.take("word").text.lower()
        if (token := self.peek()) is not None and token.kind == "/":
            self.pos += 1
            self.take("word")
        self.take("=")
        result = self.take("word").text.lower()
        properties: list[tuple[str, str]] = []
        try:
            token = self.peek()
            if token is not None and token.kind == "word" and token.text.lower() == "reason":
                self.pos += 1
                self.take("=")
                self.value()
            while (token := self.peek()) is not None and token.kind != ";":
                # ptype "." property, CFWS allowed around the dot; "." is no special, so the
                # pieces come as one or more words up to the "="
                words = [self.take("word").text]
                while (token := self.peek()) is not None and token.kind == "word":
                    words.append(token.text)
                    self.pos += 1
                ptype, dot, prop = "".join(words).lower().partition(".")
                if not (ptype and dot and prop) or "." in prop:
                    raise AuthResError(f"expected ptype.property, found {''.join(words)!r}")
                self.take("=")
                properties.append((f"{ptype}.{prop}", self.value()))
        except AuthResError:
            self.skip_result()
            return Result(method, result, tuple(properties), complete=False)
        return Result(method, result, tuple(properties))


def parse(value: str) -> Header:
    """One header's value (without the field name); raises AuthResError."""
    return _Parser(_lex(value)).header()


def authserv_id_of(value: str) -> str | None:
    """The authserv-id a header claims, even when the rest of it does not lex or parse."""
    parts: list[str] = []
    try:
        for token in _tokens(value):
            wanted = ("word", "@") if parts else ("word", "quoted")
            if token.kind not in wanted or (parts and not token.glued):
                break
            parts.append(token.text)
    except AuthResError:
        pass
    return "".join(parts).lower() or None


@dataclass(frozen=True, slots=True)
class Decision:
    granted: bool
    reason: str  # for the verdict and `ingest --dry-run`


def agent_authority(values: Iterable[str], trusted: frozenset[str], domain: str) -> Decision:
    """Whether the topmost trusted header says the From `domain` is authentic.

    `values` are the Authentication-Results values top to bottom. A fail in that header wins;
    a pass counts only when it names the From domain (dmarc `header.from`, dkim `header.d`)."""
    domain = domain.lower()
    for value in values:
        authserv_id = authserv_id_of(value)
        if authserv_id is None or authserv_id not in trusted:
            continue
        where = f"authentication-results {authserv_id}"
        try:
            header = parse(value)
        except AuthResError as exc:
            return Decision(False, f"{where}: unreadable ({exc})")
        for r in header.results:
            about_us = r.method == "dmarc" or (r.method == "dkim" and r.names("header.d", domain))
            if about_us and r.result == "fail":
                return Decision(False, f"{where}: {r.method}=fail")
        for r in header.results:
            if r.result != "pass" or not r.complete:
                continue
            if r.method == "dmarc" and r.names("header.from", domain):
                return Decision(True, f"{where}: dmarc=pass header.from={domain}")
            if r.method == "dkim" and r.names("header.d", domain):
                return Decision(True, f"{where}: dkim=pass header.d={domain}")
        return Decision(False, f"{where}: no dmarc or dkim pass for {domain}")
    return Decision(False, "no authentication-results from a trusted authserv-id")
