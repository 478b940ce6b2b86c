"""Load an Envoy v3 bootstrap (``-c`` file and ``--config-yaml``) into
``envoy.config.bootstrap.v3.Bootstrap``, and translate it into a ``ServerConfig``.

File formats by extension as Envoy picks them: ``.pb`` binary, ``.pb_text`` text format,
``.json`` / ``.yaml`` / ``.yml`` (and anything else) through YAML, which reads JSON too.
``--config-yaml`` is merged over the file (proto ``MergeFrom``: repeated fields append),
and ``--service-cluster`` / ``--service-node`` / ``--service-zone`` override the node.
"""

from __future__ import annotations

import dataclasses
import logging

import yaml
from google.protobuf import text_format

from meshproxy.config.errors import ConfigError, join
from meshproxy.config.protos import message_class, parse_json_into

log = logging.getLogger("meshproxy.config")


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2-ish: no timestamps, and only true/false as booleans (Envoy uses yaml-cpp,
    where ``on``/``yes`` stay strings)."""


_YamlLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in ("tag:yaml.org,2002:timestamp",
                                                  "tag:yaml.org,2002:bool")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    __import__("re").compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))


def parse_yaml(text: str, what: str):
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"unable to parse {what} as YAML/JSON: {exc}") from None


def _bootstrap_class():
    return message_class("envoy.config.bootstrap.v3.Bootstrap")


def load_bootstrap(config_path: str = "", config_yaml: str = "", *,
                   allow_unknown_fields: bool = False, service_cluster: str = "",
                   service_node: str = "", service_zone: str = ""):
    Bootstrap = _bootstrap_class()
    if not config_path and not config_yaml:
        raise ConfigError("", "At least one of --config-path or --config-yaml or "
                              "Options::configProto() should be non-empty")
    bootstrap = Bootstrap()
    if config_path:
        try:
            with open(config_path, "rb") as f:
                raw = f.read()
        except OSError:
            raise ConfigError("", f"Invalid path: {config_path}") from None
        if config_path.endswith(".pb"):
            try:
                bootstrap.ParseFromString(raw)
            except Exception as exc:
                raise ConfigError("", f"unable to parse {config_path} as binary proto: {exc}")
        elif config_path.endswith(".pb_text"):
            try:
                text_format.Parse(raw.decode(), bootstrap,
                                  allow_unknown_field=allow_unknown_fields)
            except text_format.ParseError as exc:
                raise ConfigError("", f"unable to parse {config_path} as text proto: {exc}")
        else:
            data = parse_yaml(raw.decode("utf-8", "replace"), config_path)
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise ConfigError("", f"{config_path}: the bootstrap must be a mapping")
            parse_json_into(data, bootstrap, allow_unknown_fields=allow_unknown_fields)
    if config_yaml:
        data = parse_yaml(config_yaml, "--config-yaml")
        if data:
            if not isinstance(data, dict):
                raise ConfigError("", "--config-yaml: the bootstrap must be a mapping")
            overlay = Bootstrap()
            parse_json_into(data, overlay, allow_unknown_fields=allow_unknown_fields)
            bootstrap.MergeFrom(overlay)
    if service_cluster:
        bootstrap.node.cluster = service_cluster
    if service_node:
        bootstrap.node.id = service_node
    if service_zone:
        bootstrap.node.locality.zone = service_zone
    return bootstrap


@dataclasses.dataclass
class ServerConfig:
    bootstrap: object
    node_id: str
    node_cluster: str
    admin_address: object          # (host, port), a pipe path, or None
    admin_unix: bool
    clusters: list
    listeners: list
    log_format: str | None
    warnings: list
    stats_config: object = None
    dynamic: object = None         # config.dynamic.DynamicConfig, or None


def build_server_config(bootstrap, stats_tags=()) -> ServerConfig:
    """Translate every static resource; any error is a ConfigError naming the field."""
    from meshproxy.listener.addresses import check_unique_addresses
    from meshproxy.listener.config import build_listener_config
    from meshproxy.stats.config import from_bootstrap
    from meshproxy.upstream.cluster_config import build_cluster_config, socket_address

    warnings = []
    sr = bootstrap.static_resources
    clusters = []
    names = set()
    for i, c in enumerate(sr.clusters):
        path = f"static_resources.clusters[{i}]"
        cfg = build_cluster_config(c, path)
        if cfg.name in names:
            raise ConfigError(path, f"cluster manager: duplicate cluster '{cfg.name}'")
        if cfg.type == "EDS":
            warnings.append(f"{path}: EDS cluster '{cfg.name}' has no endpoints until xDS "
                            f"is implemented")
        names.add(cfg.name)
        clusters.append(cfg)
    listeners = []
    lnames = set()
    for i, lst in enumerate(sr.listeners):
        path = f"static_resources.listeners[{i}]"
        cfg = build_listener_config(lst, path, cluster_names=names)
        if cfg.name in lnames:
            raise ConfigError(join(path, "name"), f"error adding listener named '{cfg.name}': "
                                                  f"duplicate listener name")
        lnames.add(cfg.name)
        listeners.append(cfg)
    # Two listeners may not share an address, main or additional (Envoy's listener manager).
    check_unique_addresses(listeners, [f"static_resources.listeners[{i}]"
                                       for i in range(len(listeners))])
    admin_address = None
    admin_unix = False
    if bootstrap.HasField("admin") and bootstrap.admin.HasField("address"):
        admin_address, admin_unix = socket_address(bootstrap.admin.address, "admin.address")
    from meshproxy.config.dynamic import build_dynamic_config
    dynamic = build_dynamic_config(bootstrap, clusters)
    if dynamic is not None:
        warnings.extend(dynamic.warnings)
        if dynamic.ads is None:
            warnings.append("dynamic_resources without ads_config: only ADS is implemented; "
                            "only static_resources are served")
    stats_config = from_bootstrap(bootstrap, stats_tags)
    log_format = None
    if bootstrap.HasField("application_log_config") and \
            bootstrap.application_log_config.HasField("log_format"):
        lf = bootstrap.application_log_config.log_format
        if lf.text_format:
            log_format = lf.text_format
    return ServerConfig(
        bootstrap=bootstrap,
        node_id=bootstrap.node.id,
        node_cluster=bootstrap.node.cluster,
        admin_address=admin_address,
        admin_unix=admin_unix,
        clusters=clusters,
        listeners=listeners,
        log_format=log_format,
        warnings=warnings,
        stats_config=stats_config,
        dynamic=dynamic,
    )
