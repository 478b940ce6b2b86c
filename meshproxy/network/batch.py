"""Write batching: what a connection writes while it handles one read goes out as one
``transport.write``, as Envoy buffers writes and flushes them once per dispatch.

Without it an HTTP/1 response head and body are two syscalls, and each wakes the peer: the
benchmarks measured a third of meshproxy's per-request CPU in ``write`` (benchmarks/README.md).
Reads run inside ``dispatching()`` and flush when it ends; writes made anywhere else (timers,
a connect completing) are flushed by one ``call_soon`` per loop iteration. Closing a connection
flushes first; aborting or resetting discards what is queued.
"""

from __future__ import annotations


class WriteBatch:
    """The loop's list of writers with queued bytes. ``depth`` > 0 while a read is handled."""

    __slots__ = ("loop", "pending", "scheduled", "depth")

    def __init__(self, loop):
        self.loop = loop
        self.pending: list = []
        self.scheduled = False
        self.depth = 0

    def flush_all(self) -> None:
        self.scheduled = False
        pending = self.pending
        self.pending = []
        for w in pending:
            w.flush()


_BATCH: list = [None]


def batch_for(loop) -> WriteBatch:
    b = _BATCH[0]
    if b is None or b.loop is not loop:
        b = _BATCH[0] = WriteBatch(loop)
    return b


class BatchedWriter:
    """Queues bytes for one transport until the batch flushes (or ``flush()``)."""

    __slots__ = ("transport", "batch", "buf", "tx_stats")

    def __init__(self, transport, batch: WriteBatch):
        self.transport = transport
        self.batch = batch
        self.buf = None
        # An HTTP connection manager's stats: downstream_cx_tx_bytes_total is counted here,
        # once per flush, rather than by a wrapper around every write.
        self.tx_stats = None

    def write(self, data: bytes) -> None:
        buf = self.buf
        if buf is not None:
            buf.append(data)
            return
        self.buf = [data]
        b = self.batch
        b.pending.append(self)
        if not b.depth and not b.scheduled:
            b.scheduled = True
            b.loop.call_soon(b.flush_all)

    def flush(self) -> None:
        buf = self.buf
        if buf is None:
            return
        self.buf = None
        data = buf[0] if len(buf) == 1 else b"".join(buf)
        st = self.tx_stats
        if st is not None:
            st.downstream_cx_tx_bytes_total += len(data)
        t = self.transport
        if not t.is_closing():
            t.write(data)

    def discard(self) -> None:
        self.buf = None

    @property
    def queued(self) -> int:
        return sum(map(len, self.buf)) if self.buf else 0
