"""The admin API's dispatch (Envoy's ``source/server/admin/admin.cc``): the handler table with
Envoy 1.40's paths, help texts and parameters, query parsing, method checks, and the terminal
filter that answers on the admin listener.

Behaviour taken from Envoy 1.40 (checked against the binary by tests/oracle/test_admin_oracle.py):
- a path is the part before ``?``, matched exactly; an unknown one is 404 with
  ``invalid path. `` and the help text;
- handlers that change server state want POST (``405 Method GET not allowed, POST
  required.``); the others answer any method;
- parameters come from the query string, percent-decoded (``+`` stays ``+``), first value
  wins; without a query string, a POST's ``application/x-www-form-urlencoded`` body is used;
- every answer carries ``cache-control: no-cache, max-age=0`` and
  ``x-content-type-options: nosniff`` and is sent chunked, as Envoy streams admin responses.
"""

from __future__ import annotations

import html
import logging
from urllib.parse import unquote

from meshproxy.http.headers import ResponseHeaders

log = logging.getLogger("meshproxy.admin")

TEXT = b"text/plain; charset=UTF-8"
PLAIN = b"text/plain"
JSON = b"application/json"
HTML = b"text/html; charset=UTF-8"
_FORM = b"application/x-www-form-urlencoded"
_MAX_BODY = 1 << 20


class Response:
    __slots__ = ("status", "body", "content_type", "after")

    def __init__(self, status: int, body, content_type: bytes = TEXT, after=None):
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type = content_type
        self.after = after  # called once the response is written (e.g. shutdown)

    def __repr__(self):
        return f"<Response {self.status} {len(self.body)} bytes>"


class Query:
    """Admin query parameters: ordered, repeated names allowed, ``get`` gives the first."""

    __slots__ = ("items",)

    def __init__(self, items=()):
        self.items = list(items)

    @classmethod
    def parse(cls, text: str) -> "Query":
        """Envoy's ``QueryParamsMulti::parseAndDecodeQueryString``: ``&``-separated, a name
        without ``=`` has the empty value, ``%XX`` decoded, ``+`` left alone."""
        items = []
        for part in text.split("&"):
            if not part:
                continue
            name, _, value = part.partition("=")
            items.append((unquote(name), unquote(value)))
        return cls(items)

    def get(self, name: str, default=None):
        for n, v in self.items:
            if n == name:
                return v
        return default

    def __contains__(self, name: str) -> bool:
        return any(n == name for n, _ in self.items)

    def __len__(self):
        return len(self.items)

    def __repr__(self):
        return f"<Query {self.items!r}>"


class Handler:
    __slots__ = ("path", "fn", "help", "post_only", "params")

    def __init__(self, path, fn, help_text, post_only=False, params=()):
        self.path = path
        self.fn = fn
        self.help = help_text
        self.post_only = post_only
        self.params = params  # (name, help, choices or None)

    def __repr__(self):
        return f"<Handler {self.path}{' POST' if self.post_only else ''}>"


def _build_handlers():
    from meshproxy.admin import control, stats_handlers as st, status as s
    one = ("y", "n")
    hist = ("cumulative", "disjoint", "detailed", "summary")
    fmt = "Format to use"
    filt = "Regular expression (Google re2) for filtering stats"
    used = "Only include stats that have been written by system since restart"
    return (
        Handler("/", s.h_index, "Admin home page"),
        Handler("/allocprofiler", control.h_allocprofiler,
                "enable/disable the allocation profiler (if supported)", True,
                (("enable", "enable/disable the allocation profiler", one),)),
        Handler("/certs", s.h_certs, "print certs on machine"),
        Handler("/clusters", s.h_clusters, "upstream cluster status",
                params=(("filter", "Regular expression (Google re2) for filtering clusters by "
                                   "name", None),)),
        Handler("/config_dump", s.h_config_dump, "dump current Envoy configs", params=(
            ("resource", "The resource to dump", None),
            ("mask", "The mask to apply. When both resource and mask are specified, the mask "
                     "is applied to every element in the desired repeated field so that only a "
                     "subset of fields are returned. The mask is parsed as a "
                     "Protobuf::FieldMask", None),
            ("name_regex", "Dump only the currently loaded configurations whose names match "
                           "the specified regex. Can be used with both resource and mask query "
                           "parameters.", None),
            ("include_eds", "Dump currently loaded configuration including EDS. See the "
                            "response definition for more information", None))),
        Handler("/contention", s.h_contention,
                "dump current Envoy mutex contention stats (if enabled)"),
        Handler("/cpuprofiler", control.h_cpuprofiler, "enable/disable the CPU profiler", True,
                (("enable", "enables the CPU profiler", one),)),
        Handler("/drain_listeners", control.h_drain_listeners, "drain listeners", True, (
            ("graceful", "When draining listeners, enter a graceful drain period prior to "
                         "closing listeners. This behaviour and duration is configurable via "
                         "server options or CLI", None),
            ("skip_exit", "When draining listeners, drain the connections but never stop the "
                          "listeners. The graceful parameter has no effect when this is set, "
                          "since the drain period only delays stopping the listeners", None),
            ("inboundonly", "Drains all inbound listeners. traffic_direction field in "
                            "envoy_v3_api_msg_config.listener.v3.Listener is used to determine "
                            "whether a listener is inbound or outbound.", None))),
        Handler("/healthcheck/fail", control.h_healthcheck_fail,
                "cause the server to fail health checks", True),
        Handler("/healthcheck/ok", control.h_healthcheck_ok,
                "cause the server to pass health checks", True),
        Handler("/heap_dump", s.h_heap_dump, "dump current Envoy heap (if supported)"),
        Handler("/heapprofiler", control.h_heapprofiler, "enable/disable the heap profiler",
                True, (("enable", "enable/disable the heap profiler", one),)),
        Handler("/help", h_help, "print out list of admin commands"),
        Handler("/hot_restart_version", s.h_hot_restart_version,
                "print the hot restart compatibility version"),
        Handler("/init_dump", s.h_init_dump,
                "dump current Envoy init manager information (experimental)",
                params=(("mask", "The desired component to dump unready targets. The mask is "
                                 "parsed as a Protobuf::FieldMask. For example, get the unready "
                                 "targets of all listeners with /init_dump?mask=listener`",
                         None),)),
        Handler("/listeners", s.h_listeners, "print listener info",
                params=(("format", "File format to use", ("text", "json")),)),
        Handler("/logging", control.h_logging, "query/change logging levels", True, (
            ("paths", "Change multiple logging levels by setting to <logger_name1>:"
                      "<desired_level1>,<logger_name2>:<desired_level2>. If fine grain logging "
                      "is enabled, use __FILE__ or a glob experision as the logger name. For "
                      "example, source/common*:warning", None),
            ("group", "Change given logger group to desired level, set to <logger_group_name>:"
                      "<desired_level>. logger_group_name must be a logger name.", None),
            ("level", "desired logging level, this will change all loggers's level",
             ("", "trace", "debug", "info", "warning", "error", "critical", "off")))),
        Handler("/memory", s.h_memory, "print current allocation/heap usage"),
        Handler("/memory/tcmalloc", s.h_tcmalloc, "print TCMalloc stats"),
        Handler("/peak_heap_dump", s.h_heap_dump, "dump peak Envoy heap (if supported)"),
        Handler("/quitquitquit", control.h_quit, "exit the server", True),
        Handler("/ready", s.h_ready,
                "print server state, return 200 if LIVE, otherwise return 503"),
        Handler("/reopen_logs", control.h_reopen_logs, "reopen access logs", True),
        Handler("/reset_counters", st.h_reset_counters, "reset all counters to zero", True),
        Handler("/runtime", s.h_runtime, "print runtime values"),
        Handler("/runtime_modify", control.h_runtime_modify,
                "Adds or modifies runtime values as passed in query parameters. To delete a "
                "previously added key, use an empty string as the value. Note that deletion "
                "only applies to overrides added via this endpoint; values loaded from disk "
                "can be modified via override but not deleted. E.g. ?key1=value1&key2=value2...",
                True),
        Handler("/server_info", s.h_server_info, "print server version/status information"),
        Handler("/stats", st.h_stats, "print server stats", params=(
            ("usedonly", used, None), ("filter", filt, None),
            ("invert_filter", "Invert the filter regex", None),
            ("format", fmt, ("html", "active-html", "text", "json")),
            ("type", "Stat types to include.",
             ("All", "Counters", "Histograms", "Gauges", "TextReadouts")),
            ("histogram_buckets", "Histogram bucket display mode", hist))),
        Handler("/stats/prometheus", st.h_prometheus, "print server stats in prometheus format",
                params=(("usedonly", used, None),
                        ("text_readouts", "Render text_readouts as new gaugues with value 0 "
                                          "(increases Prometheus data size)", None),
                        ("filter", filt, None),
                        ("invert_filter", "Invert the filter regex", None),
                        ("histogram_buckets", "Histogram bucket display mode",
                         ("cumulative", "summary")))),
        Handler("/stats/recentlookups", st.h_recentlookups, "Show recent stat-name lookups"),
        Handler("/stats/recentlookups/clear", st.h_ok,
                "clear list of stat-name lookups and counter", True),
        Handler("/stats/recentlookups/disable", st.h_ok,
                "disable recording of reset stat-name lookup names", True),
        Handler("/stats/recentlookups/enable", st.h_ok,
                "enable recording of reset stat-name lookup names", True),
    )


_HANDLERS: dict | None = None


def handlers() -> dict:
    global _HANDLERS
    if _HANDLERS is None:
        _HANDLERS = {h.path: h for h in _build_handlers()}
    return _HANDLERS


def help_text() -> str:
    lines = ["admin commands are:"]
    for h in handlers().values():
        lines.append(f"  {h.path}{' (POST)' if h.post_only else ''}: {h.help}")
        for name, text, choices in h.params:
            one_of = f"; One of ({', '.join(choices)})" if choices else ""
            lines.append(f"      {name}: {text}{one_of}")
    return "\n".join(lines) + "\n"


def h_help(ctx, q):
    return Response(200, help_text())


def index_html() -> str:
    rows = "".join(
        f"<tr><td><a href='{html.escape(h.path[1:] or '.')}'>{html.escape(h.path)}</a>"
        f"{' (POST)' if h.post_only else ''}</td><td>{html.escape(h.help)}</td></tr>\n"
        for h in handlers().values())
    return ("<!DOCTYPE html>\n<html lang='en'>\n<head>\n  <title>Envoy Admin</title>\n</head>\n"
            f"<body>\n<table>\n{rows}</table>\n</body>\n</html>\n")


def dispatch(ctx, method: bytes, path: bytes, body: bytes = b"",
             content_type: bytes | None = None) -> Response:
    p, _, query = path.decode("latin-1").partition("?")
    q = Query.parse(query)
    if not len(q) and body and content_type == _FORM:
        q = Query.parse(body.decode("latin-1"))
    h = handlers().get(p)
    if h is None:
        return Response(404, "invalid path. " + help_text())
    if h.post_only and method != b"POST":
        return Response(405, f"Method {method.decode('latin-1')} not allowed, POST required.")
    try:
        return h.fn(ctx, q)
    except Exception as exc:  # an admin bug must not take the server down
        log.exception("admin handler %s failed", p)
        return Response(500, f"internal error: {exc}\n")


class AdminFilter:
    """Terminal filter of the admin listener's streams: buffers the request, then answers."""

    __slots__ = ("stream", "ctx", "method", "path", "content_type", "body", "answered")
    paused_downstream = False   # never holds the client (the HCM reads this of its filter)

    def __init__(self, stream, ctx):
        self.stream = stream
        self.ctx = ctx
        self.body = b""
        self.answered = False

    def decode_headers(self, req, end_stream: bool) -> None:
        self.method = req.method
        self.path = req.path
        ct = req.get(b"content-type")
        self.content_type = ct.split(b";", 1)[0].strip().lower() if ct else None
        if end_stream:
            self._respond()

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        if data and len(self.body) < _MAX_BODY:
            self.body += data[:_MAX_BODY - len(self.body)]
        if end_stream and not self.answered:
            self._respond()

    def _respond(self) -> None:
        self.answered = True
        r = dispatch(self.ctx, self.method, self.path, self.body, self.content_type)
        headers = [(b"content-type", r.content_type),
                   (b"cache-control", b"no-cache, max-age=0"),
                   (b"x-content-type-options", b"nosniff")]
        resp = ResponseHeaders(r.status, headers)
        s = self.stream
        # No content-length: the codec chunks the body, as Envoy streams admin answers.
        s.encode_headers(resp, False)
        s.encode_data(r.body, True)
        if r.after is not None:
            self.ctx.loop.call_soon(r.after)

    # the stream's terminal-filter interface
    def on_downstream_reset(self):
        pass

    def release_flow_control(self):
        pass

    def on_downstream_write_paused(self, paused):
        pass

    def abort_upstream(self):
        pass
