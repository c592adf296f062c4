"""How far a parser's reading of a mail agrees with Zammad's expected parse results.

Shared by the agreement test (tests/unit/test_zammad_agreement.py) and the parser benchmark
(bench/parsers.py), which runs the same comparison over other parsers.

`corpus/zammad-expected/mailNNN.yml` holds what Zammad's test suite expects for
`corpus/zammad/mailNNN.eml`. A field is compared only when the YAML states it. Rules:

- from_email: case-insensitive, surrounding whitespace ignored.
- from_display_name, subject: whitespace-normalised (runs of any Unicode whitespace,
  control characters included, count as one space; ends stripped). Zammad keeps raw
  control characters from a decoded subject, we turn them into spaces.
- attachments: the *set* of file names, with two documented Zammad conventions undone
  on both sides, never per file:
  1. Zammad stores the HTML body of a mail as an extra attachment flagged
     `original-format: true` (`message.html`); that is the body, not an attachment,
     and is dropped from the expected list.
  2. Zammad makes repeated names unique by inserting a counter (`a.png` -> `a1.png`);
     a name that is another listed name plus such a counter is treated as that name,
     so the comparison is about which names occur, not about renaming schemes.

The corpus is found via `$MAILBRIDGE_CORPUS`, defaulting to `<repo>/../shared/corpus`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mailbridge.errors import ParseError
from mailbridge.parse import parse

FIELDS = ("from_email", "from_display_name", "subject", "attachments")


def corpus_dir() -> Path:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
    return Path(os.environ.get("MAILBRIDGE_CORPUS", default))


@dataclass(frozen=True)
class Extract:
    """The four compared fields, as any parser under test produced them."""

    from_email: str | None
    from_display_name: str | None
    subject: str | None
    attachments: list[str] = field(default_factory=list)


class _IgnoreRubyTags(yaml.SafeLoader):
    """SafeLoader that reads `!ruby/hash:...` and other unknown tags as plain YAML."""


def _untagged(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_IgnoreRubyTags.add_multi_constructor("!", _untagged)


def load_expectations(corpus: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(eml path, expected fields) for every Zammad expectation whose mail is present."""
    found = []
    for yml in sorted((corpus / "zammad-expected").glob("mail*.yml")):
        eml = corpus / "zammad" / (yml.stem + ".eml")
        if eml.exists():
            found.append((eml, yaml.load(yml.read_text("utf-8"), Loader=_IgnoreRubyTags) or {}))
    return found


def expected_attachment_names(expected: dict[str, Any]) -> list[str]:
    names = []
    for item in expected.get("attachments") or []:
        preferences = item.get("preferences") or {}
        if preferences.get("original-format") is True:  # rule 1: Zammad's copy of the HTML body
            continue
        names.append(str(item.get("filename") or ""))
    return names


def collapse_counters(names: Iterable[str]) -> set[str]:
    """Rule 2: drop `stem<N>.ext` when `stem.ext` is also listed (either split point)."""
    listed = set(names)
    kept = set()
    for name in listed:
        bases = {
            name[: match.end() - cut] + name[match.end() :]
            for match in re.finditer(r"\d+(?=\.|$)", name)
            for cut in range(1, len(match.group(0)) + 1)
        }
        if not bases & (listed - {name}):
            kept.add(name)
    return kept


def _spaces(text: str | None) -> str:
    return " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", text or "").split())


def compare(got: Extract, expected: dict[str, Any]) -> dict[str, tuple[bool, Any, Any]]:
    """Per stated field: (agrees, expected value, our value)."""
    result: dict[str, tuple[bool, Any, Any]] = {}
    if "from_email" in expected:
        want = (expected["from_email"] or "").strip().lower()
        have = (got.from_email or "").strip().lower()
        result["from_email"] = (want == have, expected["from_email"], got.from_email)
    if "from_display_name" in expected:
        want, have = _spaces(expected["from_display_name"]), _spaces(got.from_display_name)
        result["from_display_name"] = (
            want == have,
            expected["from_display_name"],
            got.from_display_name,
        )
    if "subject" in expected:
        want, have = _spaces(expected["subject"]), _spaces(got.subject)
        result["subject"] = (want == have, expected["subject"], got.subject)
    if "attachments" in expected:
        want_names = collapse_counters(expected_attachment_names(expected))
        have_names = collapse_counters(got.attachments)
        result["attachments"] = (want_names == have_names, sorted(want_names), sorted(have_names))
    return result


@dataclass
class Agreement:
    compared: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FIELDS, 0))
    agreed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FIELDS, 0))
    disagreements: list[str] = field(default_factory=list)
    errors: int = 0

    def rate(self, name: str) -> float:
        return self.agreed[name] / self.compared[name] if self.compared[name] else 1.0

    def summary(self) -> str:
        return ", ".join(
            f"{name} {self.agreed[name]}/{self.compared[name]} = {self.rate(name):.1%}"
            for name in FIELDS
        )


def measure(extract: Callable[[bytes], Extract], corpus: Path) -> Agreement:
    """Run one parser (raw bytes -> Extract) over every expectation and tally agreement."""
    tally = Agreement()
    for eml, expected in load_expectations(corpus):
        try:
            got = extract(eml.read_bytes())
        except Exception as exc:  # a parser that raises disagrees on every stated field
            tally.errors += 1
            got = Extract(None, None, None, [f"<{type(exc).__name__}>"])
        for name, (agrees, want, have) in compare(got, expected).items():
            tally.compared[name] += 1
            if agrees:
                tally.agreed[name] += 1
            else:
                tally.disagreements.append(f"{eml.name} {name}: zammad={want!r} ours={have!r}")
    return tally


def extract_mailbridge(raw: bytes) -> Extract:
    try:
        msg = parse(raw)
    except ParseError:
        return Extract(None, None, None, [])
    sender = msg.from_
    return Extract(
        from_email=sender.addr if sender else None,
        from_display_name=sender.name if sender else None,
        subject=msg.subject,
        attachments=[a.filename for a in msg.attachments],
    )
