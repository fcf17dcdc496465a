"""uvicorn's HTTP/1.1 protocol with the guards the explorer needs against idle connections.

uvicorn closes a keep-alive connection 5 s after its last response, but a connection that never
sends a request (or sends its head a byte at a time) stays open for ever, and its
``limit_concurrency`` counts open connections: 64 idle sockets made every request a 503 for as
long as they stayed open (issue 16.13). :func:`guarded_h11` makes a protocol class where

- a connection must send a complete request head within ``header_timeout`` seconds of opening
  or of the end of its last response, else it is closed;
- only connections with a request in progress are in uvicorn's connection set, so
  ``limit_concurrency`` bounds requests, not sockets;
- at most ``max_idle`` idle connections stay open: a newcomer closes the oldest.

Examples
--------
>>> cls = guarded_h11(10.0, 256)
>>> cls.__name__
'GuardedH11Protocol'
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["guarded_h11"]


def guarded_h11(header_timeout: float, max_idle: int) -> type[H11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)``; its connections share one idle list."""
    idle: OrderedDict[Any, None] = OrderedDict()

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._become_idle()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self in idle and self.cycle is not None and not self.cycle.response_complete:
                idle.pop(self, None)  # a request head arrived: it is a real request now
                self._cancel_deadline()
                self.connections.add(self)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._become_idle()

        def connection_lost(self, exc: Exception | None) -> None:
            idle.pop(self, None)
            self._cancel_deadline()
            super().connection_lost(exc)

        def _become_idle(self) -> None:
            self.connections.discard(self)
            idle[self] = None
            self._cancel_deadline()
            self._deadline = self.loop.call_later(header_timeout, self._close_idle)
            while len(idle) > max_idle:
                oldest = next(iter(idle))
                idle.pop(oldest, None)
                oldest._close_idle()

        def _cancel_deadline(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _close_idle(self) -> None:
            idle.pop(self, None)
            self._cancel_deadline()
            if self.transport.is_closing():
                return
            with contextlib.suppress(h11.LocalProtocolError):  # half a request head: just close
                self.conn.send(h11.ConnectionClosed())
            self.transport.close()

    return GuardedH11Protocol
