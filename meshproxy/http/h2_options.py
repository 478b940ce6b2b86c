"""``http2_protocol_options`` of the HCM (``envoy/config/core/v3/protocol.proto``
``Http2ProtocolOptions``) as an immutable object with Envoy 1.40's defaults, and the codec-wide
``http2.*`` stats (docs: configuration/http/http_conn_man/stats, "Http2 codec statistics").

Defaults are what Envoy 1.40 advertises and enforces when the field is unset (its SETTINGS frame
says MAX_CONCURRENT_STREAMS 1024 and INITIAL_WINDOW_SIZE 16 MiB; the connection window is
24 MiB), and the flood limits from ``source/common/http/http2/codec_impl.cc``; ranges are the
proto's validate rules.
"""

from __future__ import annotations

import dataclasses

from meshproxy.config.errors import ConfigError, join
from meshproxy.config.protos import wrapped
from meshproxy.stats import stat_block

# Envoy's names; the ones meshproxy counts. (Envoy's gauges, streams_active and the outbound
# frame counts, are not kept.)
H2Stats = stat_block(
    "H2Stats",
    counters=("dropped_headers_with_underscores", "goaway_sent", "header_list_size_too_large",
              "inbound_empty_frames_flood", "inbound_priority_frames_flood",
              "requests_rejected_with_underscores_in_headers",
              "rx_messaging_error", "rx_reset", "stream_refused_errors", "tx_reset"),
)


@dataclasses.dataclass(frozen=True)
class H2Options:
    hpack_table_size: int = 4096
    max_concurrent_streams: int = 1024
    initial_stream_window_size: int = 16 * 1024 * 1024
    initial_connection_window_size: int = 24 * 1024 * 1024
    max_outbound_frames: int = 10000
    max_outbound_control_frames: int = 1000
    max_consecutive_inbound_frames_with_empty_payload: int = 1
    max_inbound_priority_frames_per_stream: int = 100
    max_inbound_window_update_frames_per_data_frame_sent: int = 10
    stream_error_on_invalid_http_messaging: bool = False


def _ranged(msg, name, default, lo, hi, path):
    v = wrapped(msg, name, default)
    if not lo <= v <= hi:
        raise ConfigError(join(path, name), f"value must be inside range [{lo}, {hi}]")
    return v


def build_h2_options(o, path: str) -> H2Options:
    """``o``: an ``Http2ProtocolOptions`` message (unset fields take Envoy's defaults)."""
    d = H2Options()
    return H2Options(
        hpack_table_size=wrapped(o, "hpack_table_size", d.hpack_table_size),
        max_concurrent_streams=_ranged(o, "max_concurrent_streams", d.max_concurrent_streams,
                                       1, 2147483647, path),
        initial_stream_window_size=_ranged(o, "initial_stream_window_size",
                                           d.initial_stream_window_size, 65535, 2147483647,
                                           path),
        initial_connection_window_size=_ranged(o, "initial_connection_window_size",
                                               d.initial_connection_window_size, 65535,
                                               2147483647, path),
        max_outbound_frames=_ranged(o, "max_outbound_frames", d.max_outbound_frames, 1,
                                    2 ** 32 - 1, path),
        max_outbound_control_frames=_ranged(o, "max_outbound_control_frames",
                                            d.max_outbound_control_frames, 1, 2 ** 32 - 1,
                                            path),
        max_consecutive_inbound_frames_with_empty_payload=wrapped(
            o, "max_consecutive_inbound_frames_with_empty_payload",
            d.max_consecutive_inbound_frames_with_empty_payload),
        max_inbound_priority_frames_per_stream=wrapped(
            o, "max_inbound_priority_frames_per_stream",
            d.max_inbound_priority_frames_per_stream),
        max_inbound_window_update_frames_per_data_frame_sent=_ranged(
            o, "max_inbound_window_update_frames_per_data_frame_sent",
            d.max_inbound_window_update_frames_per_data_frame_sent, 1, 2 ** 32 - 1, path),
        stream_error_on_invalid_http_messaging=o.stream_error_on_invalid_http_messaging,
    )
