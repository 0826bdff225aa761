"""NCRONTAB schedules as the Functions timer trigger reads them, parsed by ``croniter``.

``{second} {minute} {hour} {day} {month} {day-of-week}``, UTC; a classic five-field expression is read as if it
started with ``0`` seconds, as the host does. croniter accepts more than NCrontab (the .NET library the host uses)
and differs from it in two places, so this module narrows it:

- NCrontab requires *both* the day and the day-of-week field to match (``0 0 0 13 * 5`` is Friday the 13th),
  croniter by default either of them: it is run with ``day_or=False``.
- croniter also takes Quartz/Jenkins extensions (``L``, ``W``, ``#``, ``?``, ``H``), weekday 7 and ranges that
  wrap around (``20-10``); the host refuses them, so they are refused here with the field named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import CroniterBadDateError, CroniterError, croniter

FIELDS = ("second", "minute", "hour", "day", "month", "day-of-week")
_NAMES = {
    "month": {"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"},
    "day-of-week": {"sun", "mon", "tue", "wed", "thu", "fri", "sat"},
}
_ITEM = re.compile(r"(?P<range>\*|(?P<first>\w+)(?:-(?P<last>\w+))?)(?:/(?P<step>\w*))?")
# How far ahead a schedule may first fire before it counts as never firing (29 February needs up to 8 years).
_HORIZON_YEARS = 8


class ScheduleError(ValueError):
    """The expression is not a valid NCRONTAB schedule; the message names the field at fault."""


@dataclass(frozen=True)
class Schedule:
    expression: str
    _cron: str

    def next_after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after ``moment`` (naive values are taken as UTC)."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        moment = moment.astimezone(UTC)
        try:
            found = _iterator(self._cron, moment).get_next(datetime)
        except CroniterBadDateError:
            raise ScheduleError(f"'{self.expression}' never fires") from None
        return found.astimezone(UTC)

    def matches(self, moment: datetime) -> bool:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return croniter.match(self._cron, moment.astimezone(UTC), day_or=False, second_at_beginning=True)


def _iterator(cron: str, start: datetime) -> croniter:
    return croniter(cron, start, day_or=False, second_at_beginning=True, max_years_between_matches=_HORIZON_YEARS)


def _check_field(text: str, field: str) -> None:
    for item in text.split(","):
        found = _ITEM.fullmatch(item)
        if not item or found is None:
            raise ScheduleError(f"{field}: '{item}' in '{text}' is not a number, range, list or step")
        if found["step"] is not None and not (found["step"].isdigit() and int(found["step"]) > 0):
            raise ScheduleError(f"{field}: step '{found['step']}' must be a positive number")
        values = [v for v in (found["first"], found["last"]) if v is not None]
        for value in values:
            if not value.isdigit() and value.lower() not in _NAMES.get(field, ()):
                raise ScheduleError(f"{field}: '{value}' is not a number")
        if field == "day-of-week" and "7" in values:
            raise ScheduleError("day-of-week: 7 is outside 0-6 (Sunday is 0)")
        if len(values) == 2 and all(v.isdigit() for v in values) and int(values[0]) > int(values[1]):
            raise ScheduleError(f"{field}: range '{found['range']}' runs backwards")
        # Out-of-range numbers are croniter's to find; asked about this field alone, it tells which field.
        probe = ["*"] * len(FIELDS)
        probe[FIELDS.index(field)] = item
        if not croniter.is_valid(" ".join(probe), second_at_beginning=True):
            raise ScheduleError(f"{field}: '{item}' is outside the field's range")


def parse(expression: str) -> Schedule:
    """A six-field (or classic five-field) NCRONTAB expression that fires at least once, or ScheduleError."""
    parts = expression.split()
    if len(parts) == 5:
        parts = ["0", *parts]
    if len(parts) != len(FIELDS):
        raise ScheduleError(
            f"'{expression}' has {len(parts)} fields; NCRONTAB needs six: second minute hour day month day-of-week"
        )
    for text, field in zip(parts, FIELDS, strict=True):
        _check_field(text, field)
    cron = " ".join(parts)
    try:
        _iterator(cron, datetime.now(UTC))
    except CroniterError as exc:
        raise ScheduleError(f"'{expression}' is not a valid schedule: {exc}") from None
    schedule = Schedule(expression, cron)
    schedule.next_after(datetime.now(UTC))
    return schedule
