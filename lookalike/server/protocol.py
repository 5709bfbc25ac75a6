"""The HTTP/1.1 protocol every connection runs: uvicorn's h11 protocol with a deadline for each
request's headers, writing each answer with one call."""

from typing import Any

__all__ = ["h11_protocol", "OneWritePerAnswer"]

#: bytes held before they are written anyway (a streamed photo goes out in chunks of this size)
_HOLD_BYTES = 64 * 1024


def h11_protocol(timeout_headers: float) -> Any:
    """uvicorn's h11 protocol with a deadline for each request's line and headers, and one write
    per answer.

    uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no deadline
    for headers: a client that connects and sends nothing, or half a request line, holds
    its connection for ever (slowloris). The clock starts when the connection opens and
    when the first byte of a next request arrives, and stops once the headers are in (a
    request whose headers arrive whole never starts it).

    uvicorn writes an answer's status line and headers, then its body, as they come: two
    ``send`` calls, and two TCP segments with TCP_NODELAY, for every answer of a few hundred
    bytes. The connection's transport is wrapped in :class:`OneWritePerAnswer`, so an answer
    made in one turn of the event loop (every JSON answer, a thumbnail) goes out in one call;
    a photo streamed from its file goes out as its head, then its chunks.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class LookalikeH11Protocol(H11Protocol):
        _header_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.transport = OneWritePerAnswer(transport, self.loop)  # type: ignore[assignment]  # a wrapper with the transport's methods, not a subclass
            self._arm()

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            idle = before is None or before.response_complete
            super().data_received(data)
            if self.cycle is not before:
                self._disarm()  # a whole request line and headers arrived
            elif idle:
                self._arm()  # the first bytes of a next request: its headers are due within the deadline

        def on_response_complete(self) -> None:
            self.transport.flush()  # type: ignore[attr-defined]  # our wrapper's method (set in connection_made)
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(timeout_headers, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    return LookalikeH11Protocol


class OneWritePerAnswer:
    """A connection's transport that holds what is written until the answer is complete (the
    protocol calls :meth:`flush`), the event loop's turn ends, or 64 KiB are held, then writes
    it with one call; everything else goes to the transport itself."""

    def __init__(self, transport: Any, loop: Any) -> None:
        self._transport, self._loop = transport, loop
        self._held: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)  # nothing waits for a next write longer than this turn
        self._held.append(bytes(data))
        self._size += len(data)
        if self._size >= _HOLD_BYTES:
            self.flush()

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return int(self._transport.get_write_buffer_size()) + self._size

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._size = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
