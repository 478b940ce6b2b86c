"""One upstream HTTP/1.1 connection: serialises requests and parses responses with httptools.

The connection serves one request at a time for the router's ``UpstreamRequest`` (``stream``)
and calls it back with ``on_upstream_1xx`` / ``on_upstream_headers`` / ``on_upstream_data`` /
``on_upstream_reset``. Response handling follows Envoy 1.40's HTTP/1 client codec:

* Hop-by-hop headers are consumed (RFC 9110 §7.6.1); a response that says ``Connection: close``
  (or is HTTP/1.0 without keep-alive) ends the connection after it (``upstream_cx_close_notify``).
* A response to HEAD, a 204 and a 304 have no body whatever their framing headers say
  (RFC 9110 §6.4.1); httptools cannot be told about HEAD, so the parser is replaced after one.
  1xx heads are dropped (Envoy answers ``Expect: 100-continue`` itself) but counted.
* Malformed responses are protocol errors: the connection closes and the request is reset with
  "protocol error" (the router answers 502): bad syntax, duplicate Content-Length, both
  Content-Length and chunked, a Transfer-Encoding other than ``chunked``, a status below 100.
  A bare LF line ending is accepted, as Envoy's parser accepts it.
* A close before the response is complete resets the request ("connection termination"); a
  close in the middle of a framed body also counts ``upstream_cx_protocol_error``. A body with
  neither length nor chunking ends with the close (RFC 9112 §6.3 rule 8).
"""

from __future__ import annotations

import asyncio

import httptools

from meshproxy.http.h1_common import CHUNK_END, chunk, encode_request_head
from meshproxy.http.headers import ResponseHeaders
from meshproxy.network.batch import BatchedWriter, batch_for

_SPECIAL = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                      b"upgrade", b"content-length"))

# reset reasons, as Envoy names them in local reply bodies and %UPSTREAM_TRANSPORT_FAILURE_REASON%
CONNECTION_FAILURE = "remote connection failure"
CONNECTION_TERMINATION = "connection termination"
PROTOCOL_ERROR = "protocol error"
LOCAL_RESET = "local reset"
OVERFLOW = "overflow"
CONNECT_TIMEOUT = "connection timeout"


def _parser(callbacks):
    p = httptools.HttpResponseParser(callbacks)
    p.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
    return p



class _Discard(list):
    """Where trailer fields go: nowhere."""

    __slots__ = ()

    def append(self, item) -> None:
        pass


_TRAILERS = _Discard()

class _Hop:
    """Hop-by-hop headers of one response head (made only when one comes)."""

    __slots__ = ("count", "size", "tokens", "te")

    def __init__(self):
        self.count = 0      # headers dropped, and their bytes: they count toward the limits
        self.size = 0
        self.tokens = ()    # Connection tokens
        self.te = None      # Transfer-Encoding


class UpstreamH1Connection(asyncio.Protocol):
    __slots__ = ("pool", "stats", "transport", "stream", "parser", "requests", "closed",
                 "resp", "hdrs", "eof_body", "head", "skip_1xx", "request_done",
                 "rx_started", "idle_since", "local_close", "keep_alive", "chunked_request",
                 "draining", "connected", "active_on_close", "body", "duration_handle",
                 "head_size", "limits", "out", "cl", "hop", "last_read", "spanned")

    # httptools looks every callback up with getattr(..., None) when a parser is made; a
    # missing one costs an AttributeError (formatted message and all) per new connection.
    on_chunk_complete = None

    def __init__(self, pool):
        self.pool = pool
        self.stats = pool.cluster.stats
        self.transport = None
        self.out = None
        self.stream = None
        self.parser = _parser(self)
        self.requests = 0
        self.closed = False
        self.resp = None
        self.hdrs = None
        self.eof_body = False
        self.head = False
        self.skip_1xx = False
        self.request_done = False
        self.rx_started = False
        self.idle_since = 0.0
        self.local_close = False
        self.keep_alive = True
        self.chunked_request = False
        self.draining = False        # serves no further request (max_requests_per_connection)
        self.connected = False
        self.active_on_close = False  # closed while a request was on it
        self.body = None              # body bytes parsed from the current read
        self.duration_handle = None   # max_connection_duration timer
        self.head_size = 0            # status line and final CRLF of the head (limit check)
        self.cl = None                # Content-Length value of the head being read
        self.hop = None               # _Hop: hop-by-hop headers of the head being read
        self.last_read = 0            # bytes of the read being parsed
        self.spanned = 0              # bytes of earlier reads holding part of the head
        cfg = pool.cluster.config
        self.limits = (cfg.max_headers_count, cfg.max_response_headers_bytes)

    # ---------------------------------------------------------------- transport events

    def connection_made(self, transport):
        self.transport = transport
        self.out = BatchedWriter(transport, batch_for(self.pool.loop))
        limit = self.pool.cluster.config.buffer_limit
        transport.set_write_buffer_limits(high=limit, low=limit // 2)

    def data_received(self, data):
        n = self.last_read = len(data)
        self.stats.upstream_cx_rx_bytes_total += n
        if self.stream is None:
            # Bytes on an idle connection are a protocol violation (RFC 9112 §9.3.1 pairs each
            # response with a request); the connection cannot be trusted any more.
            self.stats.upstream_cx_protocol_error += 1
            self.close()
            return
        self.rx_started = True
        b = self.out.batch
        b.depth += 1
        try:
            self.parser.feed_data(data)
            h = self.hdrs
            if h is not None and h is not _TRAILERS:
                self._head_continues(n)
            body = self.body
            if body is not None:
                # What one read brought goes on as one piece, as Envoy's codec hands its
                # filters one buffer per read (an upstream's chunks are re-chunked per read).
                self.body = None
                s = self.stream
                if s is not None and self.resp is not None:
                    s.on_upstream_data(body[0] if len(body) == 1 else b"".join(body), False)
        except httptools.HttpParserError:
            if self.stream is None and self.parser.get_status_code() == 101:
                # llhttp pauses after a 101 head, which went on already; nothing more can be
                # parsed on this connection.
                self.close()
            else:
                self._protocol_error()
        finally:
            b.depth -= 1
            if not b.depth and b.pending:
                b.flush_all()

    def _protocol_error(self) -> None:
        self.stats.upstream_cx_protocol_error += 1
        self.body = None
        s = self.stream
        if s is not None:
            self.active_on_close = True
            self._detach()
        self.close()
        if s is not None:
            s.on_upstream_reset(PROTOCOL_ERROR, self)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.closed = True
        s = self.stream
        if s is not None and self.resp is not None and self.eof_body:
            # Body delimited by close (RFC 9112 §6.3 rule 8): the close ends it.
            self.resp = None
            self._detach()
            self.pool.on_connection_closed(self, False)
            s.on_upstream_data(b"", True)
            return
        if s is not None:
            self.active_on_close = True
            if self.resp is not None:
                # The peer closed inside a framed body.
                self.stats.upstream_cx_protocol_error += 1
            self._detach()
        self.pool.on_connection_closed(self, self.active_on_close)
        if s is not None:
            s.on_upstream_reset(LOCAL_RESET if self.local_close else CONNECTION_TERMINATION,
                                self)

    def pause_writing(self):
        s = self.stream
        if s is not None:
            s.on_upstream_write_paused(True)

    def resume_writing(self):
        s = self.stream
        if s is not None:
            s.on_upstream_write_paused(False)

    # ---------------------------------------------------------------- requests

    def send_headers(self, req, end_stream: bool) -> None:
        self.requests += 1
        self.request_done = end_stream
        self.rx_started = False
        self.head = req.method == b"HEAD"
        chunked = not end_stream and req.content_length < 0
        self.chunked_request = chunked
        data = encode_request_head(req, chunked, end_stream)
        self.stats.upstream_cx_tx_bytes_total += len(data)
        self.out.write(data)

    def send_data(self, data: bytes, end_stream: bool) -> None:
        if self.chunked_request:
            if data:
                out = chunk(data) + CHUNK_END if end_stream else chunk(data)
            else:
                out = CHUNK_END if end_stream else b""
        else:
            out = data
        if out:
            self.stats.upstream_cx_tx_bytes_total += len(out)
            self.out.write(out)
        if end_stream:
            self.request_done = True

    def send_trailers(self, trailers) -> None:
        # Trailers go upstream only in chunked encoding; Envoy drops them unless enabled.
        self.send_data(b"", True)

    def _detach(self):
        """End the current request's use of this connection; returns its stream."""
        s = self.stream
        if s is not None:
            self.stream = None
            self.pool.stream_done(self)
        return s

    def reset(self) -> None:
        """The stream gives up on this connection (timeout, downstream reset): close it."""
        if self.stream is not None:
            self.active_on_close = True
            self._detach()
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.local_close = True
            if self.transport is not None:
                self.out.flush()   # as if written at once: the close comes after it
                self.transport.close()

    # ---------------------------------------------------------------- llhttp callbacks

    def on_message_begin(self):
        self.hdrs = []
        self.head_size = 17           # "HTTP/1.1 NNN " + CRLF after the status line, + CRLF
        self.cl = self.hop = None
        self.spanned = 0

    def on_chunk_header(self):
        # Past the head, what on_header sees is a trailer field (after the last chunk,
        # RFC 9112 §7.1.2): Envoy's HTTP/1 codec keeps trailers only with
        # http_protocol_options.enable_trailers; by default they are dropped, as here.
        self.hdrs = _TRAILERS

    def on_status(self, reason: bytes):
        self.head_size += len(reason)

    def on_header(self, name: bytes, value: bytes):
        # Names lower-case as Envoy stores them; hop-by-hop and framing headers consumed
        # (RFC 9110 §7.6.1). Envoy forwards response headers that Connection nominates (only
        # the hop-by-hop headers themselves go), unlike on requests. The head limits are
        # checked per read and at the end of the head, not per header (same 502, fewer steps).
        name = name.lower()
        if name in _SPECIAL:
            if name != b"content-length":
                self._hop_header(name, value)
                return
            self.cl = value
        self.hdrs.append((name, value))

    def _hop_header(self, name: bytes, value: bytes) -> None:
        hop = self.hop
        if hop is None:
            hop = self.hop = _Hop()
        hop.count += 1
        hop.size += len(name) + len(value) + 4
        if name == b"connection":
            # tokens (RFC 9110 §5.6.2) carry no inner spaces: drop them all at once
            hop.tokens += tuple(value.lower().translate(None, b" \t").split(b","))
        elif name == b"transfer-encoding":
            hop.te = value if hop.te is None else hop.te + b"," + value
        # keep-alive, proxy-connection, upgrade: dropped

    def _head_size(self) -> int:
        """Bytes of the head so far, as Balsa's max_header_length counts them (status line and
        CRLFs included)."""
        size = self.head_size + sum(len(n) + len(v) + 4 for n, v in self.hdrs)
        return size if self.hop is None else size + self.hop.size

    def _check_head_limits(self) -> None:
        hop = self.hop
        count = len(self.hdrs) if hop is None else len(self.hdrs) + hop.count
        if count > self.limits[0] or self._head_size() > self.limits[1]:
            raise httptools.HttpParserError("response headers over the limit")

    def _head_continues(self, n: int) -> None:
        """The head goes on in the next read: apply the limits to what came so far."""
        self.spanned += n
        self._check_head_limits()

    def on_headers_complete(self):
        hdrs = self.hdrs
        hop = self.hop
        limits = self.limits
        if (len(hdrs) if hop is None else len(hdrs) + hop.count) > limits[0] or \
                self.spanned + self.last_read > limits[1]:
            # the reads that hold the head bound its size: count exactly only past the limit
            self._check_head_limits()
        self.hdrs = None
        p = self.parser
        status = p.get_status_code()
        if status < 100:
            raise httptools.HttpParserError("status code below 100")
        if status < 200 and status != 101:
            # 1xx: Envoy answers Expect: 100-continue itself and drops upstream 1xx heads.
            self.skip_1xx = True
            s = self.stream
            if s is not None:
                s.on_upstream_1xx(status)
            return
        resp = ResponseHeaders(status, hdrs)
        if self.cl is not None:
            try:
                resp.content_length = int(self.cl)
            except ValueError:
                resp.content_length = -2
        if hop is None:
            tokens = te = None
        else:
            tokens = hop.tokens
            te = hop.te
        if te is not None:
            # Only "chunked" is a transfer coding Envoy's client codec takes.
            if any(t.strip().lower() != b"chunked" for t in te.split(b",")):
                raise httptools.HttpParserError("unsupported transfer-encoding")
            resp.chunked = True
        # Envoy's shouldCloseConnection: "close" token, or HTTP/1.0 without "keep-alive".
        if p.get_http_version() == "1.0":
            keep_alive = tokens is not None and b"keep-alive" in tokens and b"close" not in tokens
        else:
            keep_alive = tokens is None or b"close" not in tokens
        resp.keep_alive = keep_alive
        if not keep_alive:
            self.stats.upstream_cx_close_notify += 1
        no_body = self.head or status == 204 or status == 304 or status == 101
        if status == 204 or status == 101:
            # RFC 9110 §8.6: no Content-Length on a 204; Envoy drops one that comes.
            resp.headers = [h for h in resp.headers if h[0] != b"content-length"]
            resp.content_length = -1
        end_stream = no_body or (not resp.chunked and resp.content_length == 0)
        self.eof_body = not no_body and not resp.chunked and resp.content_length < 0
        self.keep_alive = keep_alive and not self.eof_body and status != 101
        self.resp = resp
        s = self.stream
        if end_stream:
            self.resp = None
            if self.head and (resp.chunked or resp.content_length > 0 or
                              resp.content_length < 0):
                # httptools would wait for a HEAD response's body: start a fresh parser.
                self.parser = _parser(self)
            self._response_complete()
        if s is not None:
            s.on_upstream_headers(resp, end_stream)

    def on_body(self, body: bytes):
        if self.resp is None:
            return
        if self.body is None:
            self.body = [body]
        else:
            self.body.append(body)

    def on_message_complete(self):
        if self.skip_1xx:
            self.skip_1xx = False
            return
        if self.resp is None:
            return
        self.resp = None
        body = self.body
        self.body = None
        s = self.stream
        self._response_complete()
        if s is not None:
            s.on_upstream_data(b"".join(body) if body else b"", True)

    def _response_complete(self):
        self._detach()
        if self.keep_alive and self.request_done and not self.closed:
            self.pool.release(self)
            return
        if not self.request_done:
            # The response ended before the request: Envoy's router resets the upstream
            # request (Filter::onUpstreamComplete), so the close counts with an active request.
            self.active_on_close = True
        self.close()

    def __repr__(self):
        return (f"<UpstreamH1Connection {self.pool.host.address_str} requests={self.requests} "
                f"{'busy' if self.stream else 'idle'}{' closed' if self.closed else ''}>")
