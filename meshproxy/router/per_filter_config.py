"""``typed_per_filter_config`` on virtual hosts, routes and weighted clusters, checked as Envoy
checks it when it loads a route table (``source/common/router/per_filter_config.cc``).

Envoy finds the filter factory by the config's type URL (a ``TypedStruct``'s inner type URL), so
the map key is only a label: ``{"my.fault": HTTPFault}`` is a fault config. Then:

- no factory registered for the type: ``Didn't find a registered implementation for '<name>'
  with type URL: '<type>'``;
- a factory that has no route-specific config: ``The filter <name> doesn't support virtual host
  or route specific configurations``;
- in a ``FilterConfig`` wrapper: ``disabled`` only disables the filter (its config is not looked
  at), ``is_optional`` turns either error into a warning and drops the entry, and neither with
  no config is ``Empty route/virtual host per filter configuration for <name> filter``.

The two tables below were read off Envoy 1.40 itself: every message type under
``envoy.extensions.filters.http`` in xds-protos put in a route's ``typed_per_filter_config``
and run through ``envoy --mode validate`` (tests/oracle/test_per_filter_config_oracle.py checks a
sample of them against Envoy again). Types meshproxy has no descriptor for (Istio's own filters,
``io.istio.*`` in a TypedStruct) are accepted, as Istio's Envoy build registers them; see
``config/extensions.py`` for that policy.
"""

from __future__ import annotations

import logging

from meshproxy.config.errors import ConfigError
from meshproxy.config.protos import UnknownExtension, type_name_of, unpack_any

log = logging.getLogger("meshproxy.config")

_HTTP = "envoy.extensions.filters.http."
_FILTER_CONFIG = "envoy.config.route.v3.FilterConfig"

# Factories whose createRouteSpecificFilterConfig is Envoy's default (no per-route config).
NO_ROUTE_CONFIG = frozenset(_HTTP + t for t in (
    "alternate_protocols_cache.v3.FilterConfig", "cache.v3.CacheConfig",
    "cache_v2.v3.CacheV2Config", "connect_grpc_bridge.v3.FilterConfig",
    "gcp_authn.v3.GcpAuthnFilterConfig", "grpc_http1_bridge.v3.Config",
    "grpc_stats.v3.FilterConfig", "grpc_web.v3.GrpcWeb", "ip_tagging.v3.IPTagging",
    "mcp_router.v3.McpRouter", "original_src.v3.OriginalSrc",
    "proto_api_scrubber.v3.ProtoApiScrubberConfig",
    "proto_message_extraction.v3.ProtoMessageExtractionConfig",
    "rate_limit_quota.v3.RateLimitQuotaFilterConfig", "rate_limit_quota.v3.RateLimitQuotaOverride",
    "router.v3.Router", "thrift_to_metadata.v3.ThriftToMetadata", "wasm.v3.Wasm",
))

# Types with a registered factory that takes route-specific config.
ROUTE_CONFIG = frozenset(_HTTP + t for t in (
    "adaptive_concurrency.v3.AdaptiveConcurrency", "admission_control.v3.AdmissionControl",
    "api_key_auth.v3.ApiKeyAuth", "api_key_auth.v3.ApiKeyAuthPerRoute", "aws_lambda.v3.Config",
    "aws_lambda.v3.PerRouteConfig", "aws_request_signing.v3.AwsRequestSigning",
    "aws_request_signing.v3.AwsRequestSigningPerRoute", "bandwidth_limit.v3.BandwidthLimit",
    "basic_auth.v3.BasicAuth", "basic_auth.v3.BasicAuthPerRoute", "buffer.v3.Buffer",
    "buffer.v3.BufferPerRoute", "cdn_loop.v3.CdnLoopConfig", "composite.v3.Composite",
    "compressor.v3.Compressor", "compressor.v3.CompressorPerRoute", "cors.v3.Cors",
    "cors.v3.CorsPolicy", "credential_injector.v3.CredentialInjector", "csrf.v3.CsrfPolicy",
    "custom_response.v3.CustomResponse", "decompressor.v3.Decompressor",
    "dynamic_forward_proxy.v3.FilterConfig", "dynamic_forward_proxy.v3.PerRouteConfig",
    "dynamic_modules.v3.DynamicModuleFilter", "dynamic_modules.v3.DynamicModuleFilterPerRoute",
    "ext_authz.v3.ExtAuthz", "ext_authz.v3.ExtAuthzPerRoute", "ext_proc.v3.ExtProcPerRoute",
    "ext_proc.v3.ExternalProcessor", "fault.v3.HTTPFault",
    "file_system_buffer.v3.FileSystemBufferFilterConfig", "geoip.v3.Geoip",
    "grpc_field_extraction.v3.GrpcFieldExtractionConfig",
    "grpc_http1_reverse_bridge.v3.FilterConfig",
    "grpc_http1_reverse_bridge.v3.FilterConfigPerRoute",
    "grpc_json_reverse_transcoder.v3.GrpcJsonReverseTranscoder",
    "grpc_json_transcoder.v3.GrpcJsonTranscoder", "header_mutation.v3.HeaderMutation",
    "header_mutation.v3.HeaderMutationPerRoute", "header_to_metadata.v3.Config",
    "health_check.v3.HealthCheck", "json_to_metadata.v3.JsonToMetadata",
    "jwt_authn.v3.JwtAuthentication", "jwt_authn.v3.PerRouteConfig",
    "local_ratelimit.v3.LocalRateLimit", "lua.v3.Lua", "lua.v3.LuaPerRoute", "mcp.v3.Mcp",
    "mcp.v3.McpOverride", "oauth2.v3.OAuth2", "on_demand.v3.OnDemand",
    "on_demand.v3.PerRouteConfig", "ratelimit.v3.RateLimit", "ratelimit.v3.RateLimitPerRoute",
    "rbac.v3.RBAC", "rbac.v3.RBACPerRoute", "set_filter_state.v3.Config",
    "set_metadata.v3.Config", "stateful_session.v3.StatefulSession",
    "stateful_session.v3.StatefulSessionPerRoute", "tap.v3.Tap", "transform.v3.TransformConfig",
    # In xds-protos but not in Envoy 1.40's binary; accepted rather than guessed at.
    "gzip.v3.Gzip", "kill_request.v3.KillRequest", "proto_message_logging.v3.MethodLogging",
    "proto_message_logging.v3.ProtoMessageLoggingConfig",
))

# Namespaces Envoy registers no per-route factory in (known types there are plain messages).
_NOT_FACTORIES = (_HTTP, "google.protobuf.", "envoy.config.", "envoy.type.")


def check_per_filter_config(configs, path: str) -> dict:
    """Check a ``typed_per_filter_config`` map; returns it without the entries Envoy skips
    (optional ones it has no factory for)."""
    out = {}
    for name, any_msg in configs.items():
        where = f"{path}.typed_per_filter_config[{name}]" if path else name
        optional = False
        inner = any_msg
        if type_name_of(any_msg.type_url) == _FILTER_CONFIG:
            fc = unpack_any(any_msg, where)
            if fc.disabled:
                # Only disables the filter on this route; Envoy does not look at the config.
                out[name] = any_msg
                continue
            if not fc.HasField("config"):
                raise ConfigError(where, f"Empty route/virtual host per filter configuration "
                                         f"for {name} filter")
            optional = fc.is_optional
            inner = fc.config
        msg = unpack_any(inner, where)
        if isinstance(msg, UnknownExtension):
            out[name] = any_msg
            continue
        type_name = msg.DESCRIPTOR.full_name
        if type_name in NO_ROUTE_CONFIG:
            text = (f"The filter {name} doesn't support virtual host or route specific "
                    f"configurations")
        elif type_name not in ROUTE_CONFIG and type_name.startswith(_NOT_FACTORIES):
            text = (f"Didn't find a registered implementation for '{name}' with type URL: "
                    f"'{type_name}'")
        else:
            out[name] = any_msg
            continue
        if not optional:
            raise ConfigError(where, text)
        # is_optional: Envoy warns and carries on without this entry.
        log.warning("%s (optional: skipped)", text)
    return out
