"""What an adapter learns from the CRM once (the organisation's columns, its currencies), shared by the workers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LearnedOnce(Generic[T]):
    """``learn()`` runs on first use and its answer is kept; workers that ask meanwhile wait for that one answer
    instead of each asking the CRM. A ``learn`` that raises keeps nothing: the next use tries again."""

    def __init__(self, learn: Callable[[], T]) -> None:
        self._learn = learn
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._learn()
        return self._value

    def known(self) -> T | None:
        """The answer if it was learned already, without asking."""
        return self._value

    def forget(self) -> None:
        """Learn again on next use."""
        self._value = None
