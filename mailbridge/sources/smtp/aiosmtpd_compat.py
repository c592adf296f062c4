"""Everything mailbridge relies on inside aiosmtpd beyond its public hooks: the only such module.

The rest of `sources/smtp` uses aiosmtpd as documented (handler `handle_*` and `auth_*` hooks
whose return value is the reply, `smtp_*` overrides, the `SMTP` constructor). What no public hook
reaches is here, each piece pinned against the installed aiosmtpd by tests/unit/test_smtp_fast.py
and tests/unit/test_aiosmtpd_compat.py, which also check the version is one of TESTED:

- Replies aiosmtpd writes itself, before any hook could choose them (a too-big SIZE at MAIL, an
  oversized or over-long DATA, STARTTLS first): they carry no enhanced status code and LMTP owes
  one per recipient at the end of DATA, so `stock_reply` recognises them by their text.
- LHLO, LMTP's EHLO, missing from aiosmtpd's list of commands allowed before STARTTLS.
- `FastSMTP`: the same per-connection setup, discovered once per class, and plain addresses
  parsed directly. Profiled under load, aiosmtpd's `SMTP.__init__` spent about 9 % of the
  daemon's time finding the same AUTH mechanisms, handler hooks and `smtp_` commands again for
  every connection (`inspect.getmembers`, `dir`, `inspect.signature` over the same classes), and
  MAIL/RCPT spent about 8 % in `email._header_value_parser`, built for header fields, on
  `<user@example.com>`. The discovery calls inside aiosmtpd.smtp are answered from a per-class
  cache for instances of FastSMTP subclasses and their handlers only (any other aiosmtpd user in
  the process, such as a test's sink, gets the stock functions); for those, `dir` lists only the
  names aiosmtpd looks for (handle_, smtp_, auth_), so its filters run over a few names instead
  of two hundred. `_getaddr` reads a plain `<dot-atom@domain> params` itself and hands everything
  else (quoted local parts, address literals, comments, source routes, non-ASCII) to aiosmtpd's
  parser.
- `FastSMTP.smtp_DATA`: aiosmtpd's checks and replies around the data, with the data itself read
  by `data.read_data` in chunks instead of aiosmtpd's await per line (bytes content and a
  `handle_DATA` hook only; anything else takes the stock body).
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import inspect
import logging
import re
import threading
from typing import Any

import aiosmtpd.smtp
from aiosmtpd.smtp import MISSING, SMTP

from mailbridge.sources.smtp.data import read_data

log = logging.getLogger("mail.log")  # aiosmtpd's logger: the line it writes there, as it would

TESTED = ((1, 4, 6), (1, 5))  # aiosmtpd versions checked against this module: [from, to)


class StockReply(enum.Enum):
    SIZE_TOO_BIG = "MAIL ... SIZE= over data_size_limit"
    TOO_MUCH_DATA = "end of DATA: over data_size_limit"
    LINE_TOO_LONG = "end of DATA: a line over line_length_limit"
    STARTTLS_FIRST = "a command before STARTTLS when it is required"

    @property
    def ends_data(self) -> bool:
        """Written at the end of DATA, where LMTP answers once per recipient."""
        return self in (StockReply.TOO_MUCH_DATA, StockReply.LINE_TOO_LONG)


# the exact texts aiosmtpd 1.4 pushes for these
STOCK_REPLIES = {
    "552 Error: message size exceeds fixed maximum message size": StockReply.SIZE_TOO_BIG,
    "552 Error: Too much mail data": StockReply.TOO_MUCH_DATA,
    "500 Line too long (see RFC5321 4.5.3.1.6)": StockReply.LINE_TOO_LONG,
    "530 Must issue a STARTTLS command first": StockReply.STARTTLS_FIRST,
}


def stock_reply(status: str | bytes) -> StockReply | None:
    """Which of aiosmtpd's own replies this is (see StockReply), or None for any other."""
    text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
    return STOCK_REPLIES.get(text)


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
# `<local@domain>` then parameters; no "(" after it, since a comment there is CFWS to the parser
_PLAIN = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})*)>([^(]*)\Z")

_lock = threading.Lock()
_fast_types: set[type] = set()  # classes whose members are the same for every instance
_members: dict[type, tuple[str, ...]] = {}
_dirs: dict[type, list[str]] = {}
_signatures: dict[tuple[type, Any], inspect.Signature] = {}


def _cached(obj: Any) -> bool:
    return type(obj) in _fast_types


def _instance_names(obj: Any) -> list[str]:
    return list(getattr(obj, "__dict__", {}))


class _Inspect:
    """Stands in for the `inspect` module inside aiosmtpd.smtp, which calls these three only."""

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)

    @staticmethod
    def getmembers(obj: Any, predicate: Any = None) -> list[tuple[str, Any]]:
        if predicate is not None or not _cached(obj):
            return inspect.getmembers(obj, predicate)
        names = _members.get(type(obj))
        if names is None:
            # aiosmtpd keeps only the auth_ members; evaluating the others would cost the time
            names = tuple(n for n, _ in inspect.getmembers(type(obj)) if n.startswith("auth_"))
            with _lock:
                _members[type(obj)] = names
        own = [n for n in _instance_names(obj) if n.startswith("auth_") and n not in names]
        return [(n, getattr(obj, n)) for n in sorted((*names, *own))]

    @staticmethod
    def signature(obj: Any, *args: Any, **kwargs: Any) -> inspect.Signature:
        owner = getattr(obj, "__self__", None)
        if args or kwargs or owner is None or not _cached(owner):
            return inspect.signature(obj, *args, **kwargs)
        key = (type(owner), getattr(obj, "__func__", obj))
        found = _signatures.get(key)
        if found is None:
            found = inspect.signature(obj)
            with _lock:
                _signatures[key] = found
        return found


# the only names aiosmtpd.smtp looks for in a dir(): its hooks, commands and AUTH mechanisms
_PREFIXES = ("handle_", "smtp_", "auth_")


def _dir(*args: Any) -> list[str]:
    if len(args) != 1 or not _cached(args[0]):
        return builtins.dir(*args)
    obj = args[0]
    names = _dirs.get(type(obj))
    if names is None:
        names = [n for n in builtins.dir(type(obj)) if n.startswith(_PREFIXES)]
        with _lock:
            _dirs[type(obj)] = names
    own = [n for n in _instance_names(obj) if n.startswith(_PREFIXES) and n not in names]
    return sorted((*names, *own)) if own else list(names)


def install() -> None:
    """Route aiosmtpd.smtp's discovery calls through the caches, allow LHLO before STARTTLS."""
    aiosmtpd.smtp.inspect = _Inspect()  # type: ignore[assignment]
    aiosmtpd.smtp.dir = _dir  # type: ignore[attr-defined]  # a module global shadows the builtin
    aiosmtpd.smtp.ALLOWED_BEFORE_STARTTLS.add("LHLO")


def register(kind: type) -> None:
    """Mark a class (a handler's) as having the same members for every instance."""
    with _lock:
        _fast_types.add(kind)


class FastSMTP(SMTP):
    """aiosmtpd's SMTP with the per-connection discovery cached, plain addresses parsed fast and
    DATA read in chunks (`data.read_data`) rather than a line per await."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register(cls)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _PLAIN.match(arg)
        if match is None:
            if arg.startswith("<>"):  # the null sender, as aiosmtpd's parser reads it
                return "<>", arg[2:]
            return super()._getaddr(arg)
        address, rest = match.groups()
        if self.local_part_limit and address.rindex("@") > self.local_part_limit:
            return None, None
        return address, rest.lstrip()

    async def smtp_DATA(self, arg: str) -> None:
        # the stock body for what this fast path does not cover: text content, process_message
        if self._decode_data or "DATA" not in self._handle_hooks:
            return await super().smtp_DATA(arg)
        # the checks and replies of aiosmtpd's smtp_DATA before the data, in its order
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            problem, content = await read_data(
                self._reader, self.data_size_limit, self.line_length_limit
            )
        except asyncio.CancelledError:
            log.info("Connection lost during DATA")
            self._writer.close()
            raise
        if problem is not None:
            await self.push(problem)
            self._set_post_data_state()
            return
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)


register(FastSMTP)
install()
