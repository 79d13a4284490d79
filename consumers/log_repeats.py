"""Repeated warnings of a client library, logged once per interval with a count.

While a broker is unreachable, every kafka-python client logs each failed connection attempt and
each failed metadata refresh, several lines a second. :class:`RepeatedRecords` lets the first
record of a call site through, then at most one every ``interval`` seconds, which says how many it
left out. Only records of loggers under ``prefix``, at WARNING or above, are counted; everything
else passes untouched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["RepeatedRecords"]


class RepeatedRecords(logging.Filter):
    """A handler filter: one record per call site (logger, file, line) per ``interval`` seconds."""

    def __init__(self, prefix: str = "kafka", interval: float = 30.0, max_sites: int = 512,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.prefix, self.interval, self.max_sites, self._clock = prefix, interval, max_sites, clock
        self._sites: OrderedDict[tuple[str, str, int], tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not (record.name == self.prefix
                                                    or record.name.startswith(self.prefix + ".")):
            return True
        site, now = (record.name, record.pathname, record.lineno), self._clock()
        with self._lock:
            last, left_out = self._sites.get(site, (None, 0))
            if last is not None and now - last < self.interval:
                self._sites[site] = (last, left_out + 1)
                return False
            self._sites[site] = (now, 0)
            self._sites.move_to_end(site)
            while len(self._sites) > self.max_sites:
                self._sites.popitem(last=False)
        if left_out:
            record.msg = f"{record.getMessage()} ({left_out} more like this in the last {self.interval:.0f} s)"
            record.args = None
        return True
