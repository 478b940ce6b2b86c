"""Sans-IO listener-filter inspections: peek at the first bytes of a connection, decide.

``inspect_tls(data, max_size)`` is Envoy's ``tls_inspector`` (``listener.tls_inspect``) and
``inspect_http(data)`` its ``http_inspector`` (``listener.http_inspect``). Each returns
``NEED_MORE`` until it can decide, given everything read so far.
"""

from __future__ import annotations

from meshproxy.listener.http_inspect import H2_PREFACE, MAX_INSPECT, READ_ERROR, inspect_http
from meshproxy.listener.tls_inspect import MAX_CLIENT_HELLO, NEED_MORE, TlsResult, inspect_tls

__all__ = ["H2_PREFACE", "MAX_CLIENT_HELLO", "MAX_INSPECT", "NEED_MORE", "READ_ERROR",
           "TlsResult", "inspect_http", "inspect_tls"]
