"""Latest-value slots: how the live engine's threads hand frames to each other.

A :class:`LatestSlot` holds at most one item. ``put`` replaces an item that nobody took yet (and
counts it as dropped), so a slow consumer always gets the newest frame and nothing queues up:
memory stays flat and latency stays bounded whatever the relative speeds of the stages.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

__all__ = ["Frame", "LatestSlot", "SlotClosed"]

T = TypeVar("T")


@dataclass
class Frame:
    """One camera frame on its way through the engine.

    Attributes:
        image: ``(H, W, 3) uint8`` RGB camera frame.
        index: 0-based number of the frame since the camera was opened (reconnects keep counting).
        t_capture: ``time.monotonic()`` seconds when the frame was read from the camera; the
            engine measures capture-to-output latency from it.
    """

    image: np.ndarray
    index: int
    t_capture: float


class SlotClosed(Exception):
    """Raised by :meth:`LatestSlot.get` once the slot is closed and empty."""


@dataclass
class _Counters:
    put: int = 0
    taken: int = 0
    dropped: int = 0


class LatestSlot(Generic[T]):
    """A thread-safe single-item mailbox that keeps only the newest item.

    Any number of producers and consumers; typically one of each.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._has_item = False
        self._closed = False
        self._counts = _Counters()

    def put(self, item: T) -> None:
        """Store ``item``, replacing (and counting as dropped) an item nobody took yet.

        Items put after :meth:`close` are ignored.
        """
        with self._cond:
            if self._closed:
                return
            if self._has_item:
                self._counts.dropped += 1
            self._item = item
            self._has_item = True
            self._counts.put += 1
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> T | None:
        """Take the newest item, waiting up to ``timeout`` seconds (None: forever).

        Returns:
            The item, or None when the wait timed out.
        Raises:
            SlotClosed: the slot was closed and holds no item.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._has_item:
                if self._closed:
                    raise SlotClosed()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            item = self._item
            self._item = None
            self._has_item = False
            self._counts.taken += 1
            self._cond.notify_all()
            return item

    def wait_empty(self, timeout: float | None = None) -> bool:
        """Block until the current item has been taken (or the slot closes).

        Producers that must not drop anything (a file played as fast as it is processed) call
        this before :meth:`put`. Returns False on timeout.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._has_item and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self) -> None:
        """No more items: wake every waiter. A pending item can still be taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def dropped(self) -> int:
        """Items replaced before anyone took them."""
        return self._counts.dropped

    @property
    def put_count(self) -> int:
        return self._counts.put

    @property
    def taken_count(self) -> int:
        return self._counts.taken
