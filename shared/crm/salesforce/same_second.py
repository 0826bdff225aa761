"""Salesforce's write condition has whole seconds; what a write does about an edit in the second it read.

``If-Unmodified-Since`` carries an HTTP date, which has no fraction of a second. An edit saved after our read but
in the same second as the version we read passes the condition, and our write would overwrite it. So before
writing a version that recent, the adapters wait until its second is over and read the record once more: a
change since then is a precondition failure, as a finer condition would have said. A version whose second ended
longer ago than a job takes from its read to its write was read after it ended, and the condition suffices.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

VERSION_SECOND = timedelta(seconds=1)
# Allowance for the clocks of the app and Salesforce differing, and the most a write waits for a second to end.
VERSION_SECOND_MARGIN = timedelta(milliseconds=250)
MAX_VERSION_WAIT_S = 2.0
READ_TO_WRITE_WINDOW = timedelta(seconds=5)


def must_read_again(stamp: datetime | None, now: Callable[[], datetime], sleep: Callable[[float], None]) -> bool:
    """Whether a record read at version ``stamp`` must be read again before it is written; waits for the
    version's second to be over first. An older version (nearly always: the poll and the queue take longer)
    costs nothing."""
    if stamp is None:
        return False
    second_over = stamp.replace(microsecond=0) + VERSION_SECOND + VERSION_SECOND_MARGIN
    current = now()
    if current >= second_over + READ_TO_WRITE_WINDOW:
        return False
    if current < second_over:
        sleep(min((second_over - current).total_seconds(), MAX_VERSION_WAIT_S))
    return True
