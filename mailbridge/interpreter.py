"""Interpreter settings for the long-running processes (`mailbridge run` and its [smtp] workers).

What is built at start (modules, SQLAlchemy's mappers and statement caches, the config, the
templates) lives until exit, yet every full garbage collection walked all of it again: under SMTP
load such a pass took 50-110 ms (bench: gc callbacks in the listener), holding the GIL, so every
session's reply waited for it, the longest stall in the p99 at 200 msg/s. `settle` moves what
exists once the process is up into the collector's permanent generation (`gc.freeze`), so later
collections scan only what was made since; garbage made later is collected as before.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Once start-up is done: free its garbage, then exempt the rest from later collections."""
    gc.collect()  # start-up's own garbage is freed, not frozen for the life of the process
    gc.freeze()
