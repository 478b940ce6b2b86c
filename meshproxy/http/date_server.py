"""The ``date`` and ``server`` response headers, as Envoy's connection manager sets them
(``ConnectionManagerUtility::mutateResponseHeaders``): ``date`` always overwritten, ``server`` per
``server_header_transformation``, each replacing an upstream header in place.
"""

from __future__ import annotations

import operator
import time

_DATE_CACHE = [0, b""]
_first = operator.itemgetter(0)


def date_value() -> bytes:
    now = int(time.time())
    if _DATE_CACHE[0] != now:
        _DATE_CACHE[0] = now
        _DATE_CACHE[1] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
    return _DATE_CACHE[1]


def set_date_server(resp, transform: str, server: bytes) -> None:
    """``date`` always overwritten; ``server`` per server_header_transformation. Each replaces
    an upstream header in place, as Envoy's header map does."""
    h = resp.headers
    names = list(map(_first, h))    # the scans below run in C
    date = date_value()
    nd = names.count(b"date")
    if nd == 1:
        h[names.index(b"date")] = (b"date", date)
    elif nd:
        # repeated (rare): set() keeps the first position and drops the rest
        resp.set(b"date", date)
        names = list(map(_first, h))
    else:
        h.append((b"date", date))
    if transform == "OVERWRITE":
        ns = names.count(b"server")
        if ns == 1:
            h[names.index(b"server")] = (b"server", server)
        elif ns:
            resp.set(b"server", server)
        else:
            h.append((b"server", server))
    elif transform == "APPEND_IF_ABSENT" and b"server" not in names:
        h.append((b"server", server))
