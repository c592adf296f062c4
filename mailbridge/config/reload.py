"""What a reload (SIGHUP) may change: settings that need a restart keep their running values."""

from __future__ import annotations

from mailbridge.config.schema import Settings

# the process holds these open (the database pool, the listening socket, the parse workers)
RESTART_ONLY = (
    ("database", "url"),
    ("database", "pool_size"),
    ("smtp", "listen"),
    ("smtp", "mode"),
    ("parse", "workers"),
)


def keep_restart_only(running: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """`new` with the RESTART_ONLY values of `running`, and the `section.key`s that differed."""
    changes: dict[str, dict[str, object]] = {}
    changed: list[str] = []
    for section, key in RESTART_ONLY:
        before = getattr(getattr(running, section), key)
        if getattr(getattr(new, section), key) != before:
            changes.setdefault(section, {})[key] = before
            changed.append(f"{section}.{key}")
    if not changes:
        return new, []
    sections = {
        name: getattr(new, name).model_copy(update=values) for name, values in changes.items()
    }
    kept = new.model_copy(update=sections)
    kept._source_path = new.source_path
    return kept, changed
