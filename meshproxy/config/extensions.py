"""What to do with an extension meshproxy does not implement (DESIGN.md, "Unknown extensions").

Istio sends filters that only observe traffic (``istio.stats``, ``istio.metadata_exchange``,
``istio.alpn``, ``grpc_stats`` ...). Those are skipped with a warning and a counter, never
rejected: a rejection would fail pilot-agent's readiness. A filter that decides who may talk to
whom (RBAC, ext_authz, JWT, ...) and that meshproxy cannot enforce is rejected unless the config
marks it ``is_optional``, exactly as Envoy fails closed on an unknown filter.
"""

from __future__ import annotations

import logging

from meshproxy.config.errors import ConfigError
from meshproxy.config.protos import UnknownExtension, type_name_of

log = logging.getLogger("meshproxy.config")

# Filters (by type name prefix or filter name) that enforce access control or can reject
# requests on their own: never skipped silently.
SECURITY_TYPES = (
    "envoy.extensions.filters.http.rbac.",
    "envoy.extensions.filters.network.rbac.",
    "envoy.extensions.filters.http.ext_authz.",
    "envoy.extensions.filters.network.ext_authz.",
    "envoy.extensions.filters.http.jwt_authn.",
    "envoy.extensions.filters.http.oauth2.",
    "envoy.extensions.filters.http.basic_auth.",
    "envoy.extensions.filters.http.api_key_auth.",
    "envoy.extensions.filters.http.ext_proc.",
    "envoy.extensions.filters.http.lua.",
    "envoy.extensions.filters.http.rate_limit_quota.",
    "envoy.extensions.filters.http.wasm.",
    "envoy.extensions.filters.network.wasm.",
    "envoy.extensions.filters.http.set_metadata.",
    "io.istio.network.authn.",
    "istio.envoy.config.filter.http.authn.",
)
SECURITY_NAMES = frozenset((
    "envoy.filters.http.rbac", "envoy.filters.network.rbac", "envoy.filters.http.ext_authz",
    "envoy.filters.network.ext_authz", "envoy.filters.http.jwt_authn", "envoy.filters.http.oauth2",
    "envoy.filters.http.basic_auth", "envoy.filters.http.ext_proc", "envoy.filters.http.lua",
    "istio_authn", "istio.authn",
))

# Wasm plugins Istio ships for telemetry only (the null-VM builtins): safe to skip.
TELEMETRY_WASM_CODE = ("envoy.wasm.stats", "envoy.wasm.metadata_exchange",
                       "envoy.wasm.attributegen")


class SkipCounter:
    """Counts skipped extensions (reported as ``server.meshproxy.extensions_skipped``)."""
    skipped = 0


def _is_telemetry_wasm(msg) -> bool:
    try:
        vm = msg.config.vm_config
        code = vm.code.local.inline_string
    except AttributeError:
        return False
    return code in TELEMETRY_WASM_CODE


def unimplemented(kind: str, name: str, typed, is_optional: bool, path: str) -> None:
    """Decide for a filter meshproxy does not implement: return (skip it, logged and counted)
    or raise ConfigError (a security filter that is not optional)."""
    type_url = typed.type_url if isinstance(typed, UnknownExtension) else \
        (typed.DESCRIPTOR.full_name if typed is not None else "")
    tname = type_name_of(type_url) if type_url else ""
    security = name in SECURITY_NAMES or any(tname.startswith(p) for p in SECURITY_TYPES)
    if security and tname.startswith(("envoy.extensions.filters.http.wasm.",
                                      "envoy.extensions.filters.network.wasm.")) \
            and _is_telemetry_wasm(typed):
        security = False
    if security and not is_optional:
        raise ConfigError(path, f"{kind} '{name}' ({tname or 'no type'}) enforces policy and is "
                                f"not implemented by meshproxy; refusing the configuration "
                                f"(fail closed). Mark it is_optional to skip it.")
    SkipCounter.skipped += 1
    log.warning("%s: skipping %s '%s' (%s): not implemented by meshproxy", path, kind, name,
                tname or "no type")
