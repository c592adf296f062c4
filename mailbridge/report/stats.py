"""The numbers behind the report's delays: percentiles, distributions and histogram buckets."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

PERCENTILES = (50, 90, 99)
# upper bounds in seconds, and how a person reads them; the last bucket is open-ended
HISTOGRAM_BUCKETS: tuple[tuple[float, str], ...] = (
    (300, "< 5m"),
    (900, "5-15m"),
    (3600, "15m-1h"),
    (4 * 3600, "1-4h"),
    (86400, "4-24h"),
    (3 * 86400, "1-3d"),
    (7 * 86400, "3-7d"),
    (math.inf, "> 7d"),
)


def percentile(ordered: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) of sorted values."""
    position = (len(ordered) - 1) * p / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    ordered = sorted(values)
    stats: dict[str, float | None] = {"mean": seconds(sum(ordered) / len(ordered))}
    return stats | {f"p{p}": seconds(percentile(ordered, p)) for p in PERCENTILES}


def histogram(values: Iterable[float]) -> list[dict[str, Any]]:
    counts = Counter(next(label for bound, label in HISTOGRAM_BUCKETS if v < bound) for v in values)
    return [{"bucket": label, "count": counts.get(label, 0)} for _, label in HISTOGRAM_BUCKETS]


def seconds(value: float) -> float:
    """A duration as the report's JSON holds it: seconds, rounded to milliseconds."""
    return round(value, 3)
