"""Slow clients at hubcompare's Hub server: a whole-request deadline, and who gives up a slot when all are taken.

Each connection holds one of the server's ``max_connections`` slots (one thread each). Two rules keep slow
clients from holding them all:

* **A whole-request deadline.** A request's head (request line and headers) must be in within ``timeout``
  seconds of its first byte, and its body within ``timeout + Content-Length / min_upload_rate`` seconds of
  that same first byte: a minimum average upload rate (16 KiB/s by default) once the first ``timeout``
  seconds are spent, so a large upload gets time in proportion to its size while a client that sends a
  byte every few seconds is cut off (408) however steadily it drips. Waiting for a request (an idle
  keep-alive connection) is bounded by ``timeout`` too, as before.
* **A full server makes room.** When every slot is taken, a new connection takes the slot of the
  connection that has waited longest while still sending its head, or sitting idle, or sending a body
  behind the minimum rate (after a ``BODY_GRACE`` seconds start). A connection whose request is being
  answered, or whose body keeps up, is never dropped. A normal client sends its head in milliseconds,
  so it is always the newest and is served whatever number of slow clients hold the rest.

:class:`DeadlineReader` is the socket reader that enforces the first rule (every ``recv`` is given only
the time left); :class:`Slot` and :func:`pick_victim` are the second.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time

__all__ = ["BODY_GRACE", "DROPPED", "DeadlineReader", "RequestDeadline", "Slot", "pick_victim", "raw_503",
           "IDLE", "HEAD", "BODY", "WORK"]

BODY_GRACE = 1.0  # seconds a body may take to get going before a full server counts it as behind
IDLE, HEAD, BODY, WORK = "idle", "head", "body", "work"


def raw_503(message: str) -> bytes:
    """A whole 503 answer in the Hub's form (JSON body, ``X-Error-Message``), closing the connection."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\nX-Error-Message: {message}\r\n\r\n").encode() + body


DROPPED = raw_503("the hub was full and this request was arriving slowly, so it was dropped; send requests whole at once")


class RequestDeadline(TimeoutError):
    """The request did not arrive whole by its deadline (the handler answers 408 and closes)."""


class Slot:
    """What one connection is doing now: ``phase`` (idle, head, body, work) since ``since`` (monotonic).

    ``lock`` is the server's: eviction and the step into ``work`` exclude each other, so a dropped
    connection never starts an answer and an answer is never cut to make room.
    """

    __slots__ = ("phase", "since", "started", "body_since", "body_bytes", "body_len", "evicted", "lock", "sock")

    def __init__(self, sock: socket.socket | None = None, lock: threading.Lock | None = None):
        self.phase, self.since, self.started = IDLE, time.monotonic(), None
        self.body_since, self.body_bytes, self.body_len = 0.0, 0, 0
        self.evicted, self.lock, self.sock = False, lock or threading.Lock(), sock

    def enter(self, phase: str) -> None:
        """Move to ``phase``; into ``work`` only if not dropped meanwhile (ConnectionAbortedError)."""
        with self.lock:
            if self.evicted and phase == WORK:
                raise ConnectionAbortedError("this connection was dropped to make room for another")
            if phase != self.phase:
                self.phase, self.since = phase, time.monotonic()

    def start_body(self, length: int) -> None:
        with self.lock:
            self.phase, self.body_since, self.body_bytes, self.body_len = BODY, time.monotonic(), 0, length
            self.since = self.started or self.body_since

    def behind(self, now: float, min_rate: float) -> bool:
        """A body that arrives slower than ``min_rate`` bytes/s (after ``BODY_GRACE`` s)."""
        return self.body_bytes < self.body_len and self.body_bytes < min_rate * (now - self.body_since - BODY_GRACE)


def pick_victim(slots, min_rate: float, now: float | None = None) -> Slot | None:
    """The slot to give up when all are taken: the longest-waiting one that is idle, sending its head, or
    sending a body behind ``min_rate``; None if every connection is being answered or keeping up."""
    now = time.monotonic() if now is None else now
    best = None
    for s in slots:
        if s.evicted:
            continue
        if s.phase in (IDLE, HEAD) or (s.phase == BODY and s.behind(now, min_rate)):
            if best is None or s.since < best.since:
                best = s
    return best


class DeadlineReader(io.RawIOBase):
    """The raw side of a connection's ``rfile``: each ``recv`` waits at most until the request's deadline.

    ``begin()`` before each request: until its first byte a read may wait ``idle`` seconds (socket timeout,
    as before); the first byte starts the head deadline (``head`` seconds); ``extend(n, rate)`` moves the
    deadline out by ``n / rate`` seconds for an ``n``-byte body. ``head``/``idle`` None: no deadline.
    """

    def __init__(self, sock: socket.socket, slot: Slot, idle: float | None, head: float | None):
        super().__init__()
        self.sock, self.slot, self.idle, self.head = sock, slot, idle, head
        self.deadline: float | None = None
        self.expired = False

    def begin(self) -> None:
        self.deadline, self.expired = None, False
        self.slot.started = None
        self.slot.enter(IDLE)

    def extend(self, nbytes: int, rate: float) -> None:
        """An ``nbytes`` body follows the head: ``nbytes / rate`` more seconds (a pipelined head that came whole
        from the buffer starts its deadline here)."""
        if self.head is None:
            return
        if self.deadline is None:
            self.deadline = time.monotonic() + self.head
        self.deadline += nbytes / rate

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self.deadline is None:
            wait = self.idle
        else:
            wait = self.deadline - time.monotonic()
            if wait <= 0:
                self.expired = True
                raise RequestDeadline("the request did not arrive whole by its deadline")
        self.sock.settimeout(wait)
        try:
            n = self.sock.recv_into(buf)
        except TimeoutError:
            if self.deadline is None:
                raise  # idle: http.server closes the connection quietly, as it always did
            self.expired = True
            raise RequestDeadline("the request did not arrive whole by its deadline") from None
        finally:
            self.sock.settimeout(self.idle)  # writes keep the plain timeout
        if n and self.deadline is None and self.head:
            now = time.monotonic()
            self.deadline, self.slot.started = now + self.head, now
            self.slot.enter(HEAD)
        return n
