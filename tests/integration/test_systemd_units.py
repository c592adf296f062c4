"""The systemd units: the settings the operator guide promises, and `systemd-analyze verify`
(when it is installed) finding no syntax errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
NAMES = ("mailbridge.service", "mailbridge-rules.service", "mailbridge-rules.timer")
# what verify reports about the machine it runs on, not about the unit files
ENVIRONMENTAL = re.compile(
    r"is not executable|No such file or directory|Failed to resolve (user|group)|"
    r"user .* (not found|does not exist)|Failed to (connect to|create) bus|"
    r"Failed to initialize|Running in chroot|Operation not permitted|Permission denied",
    re.IGNORECASE,
)
SYNTAX = re.compile(
    r":\d+: |Unknown (key|section|lvalue)|Failed to parse|Invalid |Missing '=' |"
    r"has no ExecStart|Service has more than one|Unknown value",
    re.IGNORECASE,
)


def settings(name: str) -> dict[str, list[str]]:
    """key -> values (a key may repeat) of a unit file, comments and sections ignored."""
    out: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def one(unit: dict[str, list[str]], key: str) -> str:
    assert key in unit, f"{key} missing"
    return unit[key][-1]


def test_daemon_unit_runs_as_a_hardened_notify_service() -> None:
    unit = settings("mailbridge.service")
    assert one(unit, "Type") == "notify"
    assert one(unit, "WatchdogSec") == "30"
    assert one(unit, "Restart") == "on-failure"
    assert one(unit, "User") == "mailbridge"
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "ExecStart").endswith(" run") and one(unit, "ExecStart").startswith("/")
    assert one(unit, "StateDirectory") == "mailbridge"
    assert one(unit, "WorkingDirectory") == "/var/lib/mailbridge"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/mailbridge",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }.items():
        assert one(unit, key) == value, key
    # no capabilities unless port 25 is configured (explained in a comment in the unit)
    assert one(unit, "CapabilityBoundingSet") == ""
    assert one(unit, "AmbientCapabilities") == ""
    assert "CAP_NET_BIND_SERVICE" in (UNITS / "mailbridge.service").read_text()


def test_rules_timer_runs_the_rules_service() -> None:
    service, timer = settings("mailbridge-rules.service"), settings("mailbridge-rules.timer")
    assert one(service, "Type") == "oneshot"
    assert one(service, "ExecStart").endswith(" rules run")
    assert one(service, "User") == "mailbridge"
    assert one(service, "ProtectSystem") == "strict"
    assert one(timer, "Unit") == "mailbridge-rules.service"
    assert one(timer, "Persistent") == "yes"
    assert one(timer, "OnCalendar")
    assert one(timer, "WantedBy") == "timers.target"


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    true = shutil.which("true") or "/bin/true"
    for name in NAMES:
        # the entry point is not installed system-wide here; any existing binary keeps verify
        # looking at the unit syntax instead of the machine
        text = re.sub(r"^(ExecStart=)\S+", rf"\g<1>{true}", (UNITS / name).read_text(), flags=re.M)
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / n) for n in NAMES)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    syntax = [line for line in lines if SYNTAX.search(line) and not ENVIRONMENTAL.search(line)]
    assert not syntax, "\n".join(syntax)
    if result.returncode != 0:
        unexplained = [line for line in lines if not ENVIRONMENTAL.search(line)]
        assert not unexplained, "\n".join(unexplained)
