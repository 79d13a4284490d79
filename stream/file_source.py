"""A JSONL file, FIFO or standard input as a :class:`~xtream.stream.sources.Source`."""

from __future__ import annotations

import logging
import os
import select
import stat
import sys
import time
from pathlib import Path

from xtream.stream.records import Record, offset_key
from xtream.stream.sources import Source

__all__ = ["JsonlFileSource"]

logger = logging.getLogger(__name__)


class JsonlFileSource(Source):
    """JSON lines from a file, a FIFO, or standard input (``-``), read as a stream.

    The offset of a record is its line number (from 0); the input is partition 0 of topic
    ``file:<name>`` (``file:stdin`` for ``-``). A restart with ``start_offsets`` reads past the lines
    before its offset again without handing them out. Memory stays bounded whatever the input's
    size: at most one read chunk plus one line, and a line longer than ``max_line_bytes`` is handed
    out cut to ``max_line_bytes + 1`` bytes (so the parser rejects it as too large) with the rest
    of it skipped.

    Opening never blocks (a FIFO without a writer yet included) and :meth:`poll_batch` waits at most
    its ``timeout_ms`` for input, so the caller's loop keeps turning and can stop on SIGTERM.
    Without ``follow`` the source is exhausted at the end of the input; with ``follow`` it waits for
    more, like ``tail -F``: lines appended later are read as they come, a line without its newline
    yet is held until it is complete, and a file replaced (rotated) or truncated under the same
    path is reopened from its start, with line numbers continuing.
    """

    CHUNK_BYTES = 1 << 16

    def __init__(self, path: str | Path, start_offsets: dict[str, int] | None = None, *, follow: bool = False,
                 max_line_bytes: int = 16 << 20, poll_interval: float = 0.2) -> None:
        self.stdin = str(path) == "-"
        self.path = Path(path)
        self.topic = "file:stdin" if self.stdin else f"file:{self.path.name}"
        self.follow = follow
        self.max_line_bytes = max_line_bytes
        self.poll_interval = poll_interval
        self.committed: dict[str, int] = {}
        self._skip_to = (start_offsets or {}).get(offset_key(self.topic, 0), 0)
        self._line = 0                 # number of the next line
        self._buf = bytearray()
        self._discarding = False       # inside the rest of an over-long line
        self._eof = False
        self._fd = -1
        self._open()

    def _open(self) -> None:
        if self.stdin:
            self._fd = os.dup(sys.stdin.fileno())
        else:   # O_NONBLOCK: opening a FIFO must not wait for its writer; reads then block (after select)
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            os.set_blocking(self._fd, True)
        info = os.fstat(self._fd)
        self._regular = stat.S_ISREG(info.st_mode)
        self._inode = (info.st_dev, info.st_ino)
        self._read_bytes = 0

    def _replaced(self) -> bool:
        """The path now names another file (rotated), or this one shrank (truncated)."""
        if self.stdin or not self._regular:
            return False
        try:
            info = os.stat(self.path)
        except OSError:   # between a rotation's rename and the new file's creation
            return False
        return (info.st_dev, info.st_ino) != self._inode or info.st_size < self._read_bytes

    def _fill(self, timeout: float) -> bool:
        """Read what is available within ``timeout`` seconds into the buffer; False if nothing came."""
        ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout))
        if not ready:
            return False
        data = os.read(self._fd, self.CHUNK_BYTES)
        if data:
            self._read_bytes += len(data)
            self._buf += data
            return True
        if not self.follow:
            self._eof = True
        elif self._replaced():
            logger.warning("%s was replaced or truncated; reading it from its start", self.path)
            os.close(self._fd)
            self._open()
        else:
            time.sleep(min(self.poll_interval, max(0.0, timeout)))
        return False

    def _take_line(self) -> bytes | None:
        """The next complete line from the buffer (a cut one if over-long), or None."""
        while True:
            if self._discarding:
                newline = self._buf.find(b"\n")
                if newline < 0:
                    self._buf.clear()
                    return None
                del self._buf[: newline + 1]
                self._discarding = False
                continue
            newline = self._buf.find(b"\n", 0, self.max_line_bytes + 1)
            if newline >= 0:
                line = bytes(self._buf[:newline])
                del self._buf[: newline + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buf) > self.max_line_bytes:
                line = bytes(self._buf[: self.max_line_bytes + 1])
                self._buf.clear()
                self._discarding = True
                return line
            if self._eof and self._buf:   # a last line without its newline
                line = bytes(self._buf)
                self._buf.clear()
                return line[:-1] if line.endswith(b"\r") else line
            return None

    def poll_batch(self, max_records: int, timeout_ms: int) -> list[Record]:
        deadline = time.monotonic() + timeout_ms / 1000
        out: list[Record] = []
        while len(out) < max_records:
            line = self._take_line()
            if line is not None:
                if self._line >= self._skip_to:
                    out.append(Record(self.topic, 0, self._line, line))
                self._line += 1
                continue
            if self._eof:
                break
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:   # hand out what we have; take only what is there already
                if not self._fill(0.0):
                    break
            else:
                self._fill(remaining)
        return out

    def commit(self, offsets: dict[str, int]) -> None:
        self.committed.update(offsets)

    def exhausted(self) -> bool:
        return self._eof and not self._buf

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
