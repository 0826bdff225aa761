"""NCRONTAB schedules as the Functions timer trigger reads them: six fields, seconds first, UTC.

``{second} {minute} {hour} {day} {month} {day-of-week}``; each field takes ``*``, numbers, ranges
``a-b``, lists ``a,b`` and steps ``*/n``, ``a-b/n`` or ``a/n`` (from ``a`` to the field's maximum).
Months and weekdays also take three-letter English names. A five-field expression is read as if it
started with ``0`` seconds, which is what the host does with classic cron.

Unlike Vixie cron, NCrontab (the .NET library the host uses) requires *both* the day-of-month and
the day-of-week field to match, so ``0 0 0 13 * 5`` means "Friday the 13th", not "the 13th or any
Friday". This parser keeps that behaviour so a schedule fires here when it fires in Azure.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}


class NcrontabError(ValueError):
    """The expression is not a valid NCRONTAB schedule; the message names the field at fault."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None


_FIELDS = (
    _Field("second", 0, 59),
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day", 1, 31),
    _Field("month", 1, 12, _MONTHS),
    _Field("day-of-week", 0, 6, _WEEKDAYS),
)


def _value(text: str, field: _Field) -> int:
    key = text.strip().lower()
    if field.names and key in field.names:
        return field.names[key]
    if not key.isdigit():
        raise NcrontabError(f"{field.name}: '{text}' is not a number")
    number = int(key)
    if not field.low <= number <= field.high:
        raise NcrontabError(f"{field.name}: {number} is outside {field.low}-{field.high}")
    return number


def _parse_field(text: str, field: _Field) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise NcrontabError(f"{field.name}: empty list item in '{text}'")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise NcrontabError(f"{field.name}: step '{step_text}' must be a positive number")
            step = int(step_text)
        if base == "*":
            first, last = field.low, field.high
        elif "-" in base:
            start, _, end = base.partition("-")
            first, last = _value(start, field), _value(end, field)
            if first > last:
                raise NcrontabError(f"{field.name}: range '{base}' runs backwards")
        else:
            first = _value(base, field)
            last = field.high if slash else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Schedule:
    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday, as in NCRONTAB

    def matches(self, moment: datetime) -> bool:
        return (
            moment.second in self.seconds
            and moment.minute in self.minutes
            and moment.hour in self.hours
            and self._day_matches(moment)
        )

    def _day_matches(self, moment: datetime) -> bool:
        # datetime.weekday() counts Monday as 0; NCRONTAB counts Sunday as 0.
        return moment.month in self.months and moment.day in self.days and (moment.weekday() + 1) % 7 in self.weekdays

    def next_after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after ``moment`` (naive values are taken as UTC)."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        moment = moment.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
        # Walk whole days first, then seconds within a matching day: at most ~8 years of days (leap-day
        # schedules) and 86,400 seconds, so even sparse schedules resolve quickly.
        limit = moment + timedelta(days=366 * 8)
        day = moment.replace(hour=0, minute=0, second=0)
        start = moment
        while day < limit:
            if self._day_matches(day):
                found = self._first_time_in_day(day, start)
                if found is not None:
                    return found
            day += timedelta(days=1)
            start = day
        raise NcrontabError(f"'{self.expression}' never fires")

    def _first_time_in_day(self, day: datetime, start: datetime) -> datetime | None:
        for hour in sorted(self.hours):
            for minute in sorted(self.minutes):
                for second in sorted(self.seconds):
                    candidate = day.replace(hour=hour, minute=minute, second=second)
                    if candidate >= start:
                        return candidate
        return None


def parse(expression: str) -> Schedule:
    """Parse a six-field (or classic five-field) NCRONTAB expression."""
    parts = expression.split()
    if len(parts) == 5:
        parts = ["0", *parts]
    if len(parts) != 6:
        raise NcrontabError(
            f"'{expression}' has {len(parts)} fields; NCRONTAB needs six: second minute hour day month day-of-week"
        )
    sets = [_parse_field(text, field) for text, field in zip(parts, _FIELDS, strict=True)]
    return Schedule(expression, *sets)
