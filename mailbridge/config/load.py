"""Loading: which file is read, TOML -> `Settings`, and every problem as `file:line: key: message`.

Every problem in a file is reported at once (SPEC section 5, `check-config`): pydantic's errors
are turned into short messages and placed on the line of their key (config/locate.py).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mailbridge.config.locate import locate
from mailbridge.config.schema import Settings
from mailbridge.config.types import Loc
from mailbridge.errors import ConfigError

ENV_VAR = "MAILBRIDGE_CONFIG"
DEFAULT_PATH = Path("config/mailbridge.toml")


def resolve_config_path(path: str | Path | None) -> Path | None:
    """The file to read: PATH, else $MAILBRIDGE_CONFIG, else ./config/mailbridge.toml if present."""
    if path:
        return Path(path)
    if env := os.environ.get(ENV_VAR):
        return Path(env)
    return DEFAULT_PATH if DEFAULT_PATH.is_file() else None


def redact_url(url: str) -> str:
    """A database URL fit for logs: the password replaced by ***."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def describe(settings: Settings) -> dict[str, str]:
    """Which config is in force, for `run`'s startup log and `check-config`: a first run must
    show which file it read and where mail is accepted, not leave the user guessing."""
    where = settings.source_path
    return {
        "config": str(where) if where else "embedded default (no config file found)",
        "database": redact_url(settings.database.url),
        "addresses": ", ".join(settings.smtp.addresses) + " (and their plus-tokens)",
    }


def load_settings(path: str | Path | None = None) -> Settings:
    """Read and validate the config (see `resolve_config_path`); no file: the embedded default."""
    resolved = resolve_config_path(path)
    if resolved is None:
        return parse_settings("", "<default>")
    try:
        text = resolved.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError([f"{resolved}:1: (file): cannot read: {reason}"]) from exc
    return parse_settings(text, str(resolved), source_path=resolved)


def parse_settings(
    text: str,
    filename: str,
    *,
    source_path: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Validate TOML text; relative paths resolve against source_path's directory, else the cwd."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = re.search(r"\s*\(at line (\d+), column \d+\)$", message)
        line = int(m[1]) if m else text.count("\n") + 1
        message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)$", "", message)
        raise ConfigError([f"{filename}:{line}: (syntax): {message}"]) from exc
    base_dir = source_path.absolute().parent if source_path else Path.cwd()
    context = {"base_dir": base_dir, "env": os.environ if env is None else env}
    problems = _duplicate_names(data)
    settings, invalid = _validate(data, context)
    problems += invalid
    if problems or settings is None:
        lines = locate(text)
        found = sorted((_line(lines, loc), _key(loc), msg) for loc, msg in problems)
        raise ConfigError([f"{filename}:{n}: {key}: {msg}" for n, key, msg in found])
    settings._source_path = source_path
    return settings


def _validate(
    data: dict[str, Any], context: dict[str, Any]
) -> tuple[Settings | None, list[tuple[Loc, str]]]:
    """Validate, and report every problem in one run: pydantic skips a table's cross-key checks
    while one of its keys is invalid, so invalid keys are set aside and the rest validated again.
    A cross-key problem that names a key set aside is only an echo of that key's own problem
    ("needs a password source" after "password_file: file not found") and is left out."""
    problems: list[tuple[Loc, str]] = []
    removed: list[Loc] = []
    for _ in range(8):  # each round removes at least one key; a config has few layers of checks
        try:
            return Settings.model_validate(data, context=context), problems
        except ValidationError as exc:
            errors = exc.errors()
        fresh = [
            (loc, message)
            for loc, message in ((tuple(e["loc"]), _message(e)) for e in errors)
            if (loc, message) not in problems  # e.g. a missing key, reported again each round
            and not any(_echoes(loc, message, r) for r in removed)
        ]
        problems += fresh
        data, dropped = _without(data, [loc for loc, _ in fresh])
        if not dropped:
            break
        removed += dropped
    return None, problems


def _echoes(loc: Loc, message: str, removed: Loc) -> bool:
    if loc[: len(removed)] == removed:
        return True
    table, key = removed[:-1], removed[-1]
    return loc[: len(table)] == table and isinstance(key, str) and key in f"{loc} {message}"


def _without(data: dict[str, Any], locs: list[Loc]) -> tuple[dict[str, Any], list[Loc]]:
    """A copy of data without the values at `locs` (a bad list item takes its whole list)."""
    import copy

    data = copy.deepcopy(data)
    dropped: list[Loc] = []
    for loc in locs:
        parent: Any = None
        node: Any = data
        key: str | int | None = None
        path: Loc = ()
        owner: tuple[Any, Any, Loc] | None = None  # the dict holding the innermost list
        for part in loc:
            if isinstance(node, dict) and part in node:
                if isinstance(node[part], list):
                    owner = (node, part, (*path, part))
            elif not (isinstance(node, list) and isinstance(part, int) and part < len(node)):
                break  # a cross-key problem: its key is not in the file, nothing to set aside
            parent, key, node, path = node, part, node[part], (*path, part)
        else:
            if isinstance(parent, dict):
                del parent[key]
                dropped.append(path)
            elif owner is not None and owner[1] in owner[0]:
                del owner[0][owner[1]]
                dropped.append(owner[2])
    return data, dropped


def _duplicate_names(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    # checked on the raw tables, so a duplicate is reported even beside other errors
    problems: list[tuple[Loc, str]] = []
    for section in ("imap", "rules", "webhooks", "queues", "filters", "calendars", "sla"):
        items, seen = data.get(section), set()
        for index, item in enumerate(items if isinstance(items, list) else []):
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str) and name in seen:
                problems.append(((section, index, "name"), f"duplicate name {name!r}"))
            elif section == "rules" and name == "wake":
                # the postponement sweep acts as `rule:wake`; a rule of that name would be confused with it
                problems.append(((section, index, "name"), "'wake' is reserved for postponements"))
            seen.add(name)
    return problems


_MESSAGES = {
    "missing": "missing required key",
    "extra_forbidden": "unknown key",
    "int_type": "expected an integer",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "dict_type": "expected a table",
    "path_type": "expected a path",
}


def _message(error: Any) -> str:
    kind, ctx, loc = error["type"], error.get("ctx") or {}, error["loc"]
    if kind == "extra_forbidden" and loc[-1] == "password":
        extra = ", oauth2_token_command" if loc[0] == "imap" else ""
        return f"secrets never sit in the file: use password_file, password_env{extra}"
    if kind == "tuple_type" and isinstance(error.get("input"), dict):
        return f"expected an array of tables: write [[{loc[-1]}]]"
    if kind == "literal_error":
        return "must be one of: " + ", ".join(re.findall(r"'([^']*)'", ctx["expected"]))
    if kind == "value_error":
        return str(ctx["error"])
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"must be at {'least' if 'ge' in ctx else 'most'} {ctx.get('ge', ctx.get('le'))}"
    return _MESSAGES.get(kind, error["msg"])


def _key(loc: Loc) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else part
    return key or "(file)"


def _line(lines: dict[Loc, int], loc: Loc) -> int:
    # a missing key has no line of its own: report its table's header instead
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1
