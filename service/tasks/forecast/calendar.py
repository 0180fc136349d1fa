"""Time stamps -> steps on a regular grid, and the seasonal time features the forecaster reads.

One parser for training (the CSV's time column) and serving (an instance's ``"start"``), so a step means the same
thing on both sides. A frequency is a grid: quarterly and monthly steps are calendar periods (``"1998 Q1"``,
``"1982 Apr"``, ``"2011-03"``), everything else is a fixed number of seconds (``"2012-01-01"``,
``"2011-12-31T13:30:00Z"``). ``step_index`` maps a stamp to an integer step on its grid; the season position of a
step is ``step % period``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# frequency -> (seconds per step, or 0 for calendar periods; the seasonal period)
FREQUENCIES: dict[str, tuple[int, int]] = {
    "Q": (0, 4),
    "M": (0, 12),
    "W": (7 * 86400, 52),
    "D": (86400, 7),
    "H": (3600, 24),
    "30min": (1800, 48),
    "15min": (900, 96),
    "min": (60, 60),
    "Y": (0, 1),
    "step": (1, 1),  # a plain step counter (0, 1, 2, ...): no calendar, the period given when known
}
HARMONICS = 2  # sin/cos of the season position at 1 and 2 cycles per period
TIME_FEATURES = 2 * HARMONICS


class TimeError(ValueError):
    """A time stamp that this frequency cannot read."""


@dataclass(frozen=True)
class Calendar:
    freq: str
    season: int = 0  # the seasonal period when it is not the frequency's usual one (0: the usual)

    @property
    def period(self) -> int:
        return self.season or FREQUENCIES[self.freq][1]

    def step_index(self, stamp: str) -> int:
        """``stamp`` -> its integer step on this frequency's grid (``TimeError`` if it is not on the grid)."""
        s = str(stamp).strip()
        if self.freq in ("Q", "M", "Y"):
            year, sub = _calendar_period(s)
            if self.freq == "Q":
                return year * 4 + (sub - 1) // 3 if sub > 0 else _quarter(s, year)
            if self.freq == "M":
                if sub <= 0:
                    raise TimeError(f"{s!r} is not a month (like '1982 Apr' or '1982-04')")
                return year * 12 + sub - 1
            return year
        if self.freq == "step":
            try:
                return int(s)
            except ValueError:
                raise TimeError(f"{s!r} is not a step number (this model counts steps: 0, 1, 2, ...)") from None
        seconds, _ = FREQUENCIES[self.freq]
        t = _epoch_seconds(s)
        if t % seconds:
            raise TimeError(f"{s!r} is not on the {self.freq} grid")
        return t // seconds

    def features(self, first_step: int, steps: int) -> np.ndarray:
        """``[steps, TIME_FEATURES]`` float32: sin/cos of the season position of each step from ``first_step``."""
        m = self.period
        out = np.zeros((steps, TIME_FEATURES), dtype=np.float32)
        if m <= 1:
            return out
        offset = 3 if self.freq == "D" else 0  # 1970-01-01 was a Thursday: weekday 0 = Monday
        pos = (np.arange(first_step, first_step + steps, dtype=np.int64) + offset) % m
        for k in range(HARMONICS):
            angle = 2 * math.pi * (k + 1) * pos / m
            out[:, 2 * k], out[:, 2 * k + 1] = np.sin(angle), np.cos(angle)
        return out


def _calendar_period(s: str) -> tuple[int, int]:
    """(year, month or 0) from '1998 Q1' / '1982 Apr' / '1982-04' / '1982-04-01' / '1998'."""
    parts = s.replace("-", " ").replace("/", " ").split()
    try:
        year = int(parts[0])
    except (ValueError, IndexError):
        raise TimeError(f"{s!r} does not start with a year") from None
    if len(parts) == 1 or parts[1].upper().startswith("Q"):
        return year, 0
    word = parts[1].lower()[:3]
    if word in MONTHS:
        return year, MONTHS.index(word) + 1
    try:
        month = int(parts[1][:2])
    except ValueError:
        raise TimeError(f"{s!r}: cannot read a month from {parts[1]!r}") from None
    if not 1 <= month <= 12:
        raise TimeError(f"{s!r}: month {month} is not 1-12")
    return year, month


def _quarter(s: str, year: int) -> int:
    parts = s.split()
    if len(parts) < 2 or not parts[1].upper().startswith("Q") or parts[1][1:] not in ("1", "2", "3", "4"):
        raise TimeError(f"{s!r} is not a quarter (like '1998 Q1')")
    return year * 4 + int(parts[1][1:]) - 1


def _epoch_seconds(s: str) -> int:
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise TimeError(f"{s!r} is not an ISO date or date-time (like '2012-01-01T13:30:00Z')") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp())


def infer_frequency(stamps: list[str]) -> str:
    """The grid of a sorted list of time stamps of one series (at least 2)."""
    first = str(stamps[0]).strip()
    parts = first.replace("-", " ").split()
    if len(parts) >= 2 and parts[1].upper().startswith("Q"):
        return "Q"
    if len(parts) >= 2 and parts[1].lower()[:3] in MONTHS:
        return "M"
    if len(parts) == 1 and parts[0].lstrip("-").isdigit():
        return (
            "Y"
            if len(parts[0]) == 4 and len(stamps) > 1 and int(stamps[1]) - int(parts[0]) == 1 and int(parts[0]) > 1000
            else "step"
        )
    if len(parts) == 2 and first[4] == "-":  # "2011-03"
        return "M"
    diffs = np.diff([_epoch_seconds(s) for s in stamps[: min(len(stamps), 200)]])
    step = int(np.median(diffs)) if len(diffs) else 86400
    if 28 * 86400 <= step <= 31 * 86400:
        return "M"
    for name, (seconds, _) in FREQUENCIES.items():
        if seconds == step:
            return name
    raise TimeError(f"time stamps {stamps[0]!r}, {stamps[1]!r}...: a step of {step} s is not a known frequency")
