"""TOML -> validated, frozen settings; loaded once by the composition root and passed down.

Every problem in a file is reported at once, one `file:line: key: message` line each (SPEC
section 5, `check-config`). Secrets never sit in the file: they are read from a file or the
environment at load and held in `Secret`, which never prints.

types.py holds the value types (durations, sizes, addresses, Secret), schema.py `Settings` with
its sections (the larger ones in schema_*.py), load.py the lookup order, TOML parsing and error
reporting (with locate.py, which finds each key's line), reload.py what a SIGHUP may change.
"""

from mailbridge.config.load import (
    DEFAULT_PATH,
    ENV_VAR,
    describe,
    load_settings,
    parse_settings,
    redact_url,
    resolve_config_path,
)
from mailbridge.config.schema import (
    DATABASE_SCHEMES,
    ClusterSettings,
    DatabaseSettings,
    LogSettings,
    MetricsSettings,
    ParseSettings,
    Settings,
)
from mailbridge.config.schema_outbound import OutboundSettings, Webhook
from mailbridge.config.schema_routing import (
    CalendarSettings,
    Filter,
    FilterMatch,
    FilterSet,
    Queue,
    SlaSettings,
)
from mailbridge.config.schema_sources import ImapAccount, SmtpSettings
from mailbridge.config.schema_tickets import AgentsSettings, Rule, TicketsSettings
from mailbridge.config.types import MAX_SIZE, MB, Secret, split_listen

__all__ = [
    "DATABASE_SCHEMES",
    "DEFAULT_PATH",
    "ENV_VAR",
    "MAX_SIZE",
    "MB",
    "AgentsSettings",
    "CalendarSettings",
    "ClusterSettings",
    "DatabaseSettings",
    "Filter",
    "FilterMatch",
    "FilterSet",
    "ImapAccount",
    "LogSettings",
    "MetricsSettings",
    "OutboundSettings",
    "ParseSettings",
    "Queue",
    "Rule",
    "Secret",
    "Settings",
    "SlaSettings",
    "SmtpSettings",
    "TicketsSettings",
    "Webhook",
    "describe",
    "load_settings",
    "parse_settings",
    "redact_url",
    "resolve_config_path",
    "split_listen",
]
