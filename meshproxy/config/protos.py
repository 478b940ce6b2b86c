"""Envoy v3 protobuf handling: lazy type resolution, JSON/YAML parsing with field-path errors,
and unpacking of ``Any`` / ``TypedStruct`` extension configs.

xds-protos ships ~700 ``_pb2`` modules; importing them all costs memory and start-up time
(DESIGN.md), so a type is resolved by importing only the modules of its proto package, the first
time a config names it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf import struct_pb2  # noqa: F401  (registers google.protobuf.Struct)
from google.protobuf.message import Message

from meshproxy.config.errors import ConfigError

_POOL = descriptor_pool.Default()
_TRIED_PACKAGES: set[str] = set()

TYPED_STRUCT_TYPES = ("udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct")
# Marker key used to carry an Any of a type we have no descriptor for through json_format.
_UNKNOWN_MARK = "__meshproxy_unknown_type_url__"
_STRUCT_URL = "type.googleapis.com/google.protobuf.Struct"


def type_name_of(type_url: str) -> str:
    return type_url.rsplit("/", 1)[-1]


def _import_package(package: str) -> None:
    if package in _TRIED_PACKAGES:
        return
    _TRIED_PACKAGES.add(package)
    top = package.split(".", 1)[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return
    if spec is None or not spec.submodule_search_locations:
        return
    rel = package.split(".")[1:]
    for root in spec.submodule_search_locations:
        directory = os.path.join(root, *rel)
        if not os.path.isdir(directory):
            continue
        for fname in sorted(os.listdir(directory)):
            if fname.endswith("_pb2.py"):
                try:
                    importlib.import_module(f"{package}.{fname[:-3]}")
                except Exception:  # a broken generated module must not stop config loading
                    continue


def find_message_descriptor(full_name: str):
    """Descriptor for ``full_name`` (e.g. ``envoy.config.cluster.v3.Cluster``) or None."""
    try:
        return _POOL.FindMessageTypeByName(full_name)
    except KeyError:
        pass
    if "." not in full_name:
        return None
    _import_package(full_name.rsplit(".", 1)[0])
    try:
        return _POOL.FindMessageTypeByName(full_name)
    except KeyError:
        return None


def message_class(full_name: str):
    desc = find_message_descriptor(full_name)
    return None if desc is None else message_factory.GetMessageClass(desc)


# --------------------------------------------------------------------------------------------
# JSON / YAML -> proto


# Well-known types whose Any JSON carries a "value" member, and that value when it is absent.
_EMPTY_WKT = {"google.protobuf.Struct": {}, "google.protobuf.ListValue": [],
              "google.protobuf.Value": None}


def _prepare(value, path: str):
    """Walk a JSON tree and wrap every ``Any`` whose type we cannot resolve, so json_format can
    parse the rest. The wrapped value keeps its type URL (see ``unpack_any``)."""
    if isinstance(value, dict):
        type_url = value.get("@type")
        if isinstance(type_url, str):
            name = type_name_of(type_url)
            if find_message_descriptor(name) is None:
                rest = {k: v for k, v in value.items() if k != "@type"}
                rest[_UNKNOWN_MARK] = type_url
                return {"@type": _STRUCT_URL, "value": rest}
            if name in _EMPTY_WKT and "value" not in value:
                # {"@type": ".../google.protobuf.Struct"} is an empty Struct to Envoy;
                # protobuf's json_format would fail on the missing "value" with a KeyError.
                return {**value, "value": _EMPTY_WKT[name]}
        return {k: _prepare(v, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_prepare(v, path) for v in value]
    return value


_AT_RE = re.compile(r' at "?[A-Za-z0-9_]+\.?([^"\s]*)"?\.*$')
_PREFIX_RE = re.compile(r"^(?:Failed to parse [A-Za-z0-9_]+ field: )+")


def _clean_parse_error(exc: Exception) -> ConfigError:
    text = str(exc).split("\n", 1)[0]
    text = _PREFIX_RE.sub("", text)
    path = ""
    m = _AT_RE.search(text)
    if m:
        path = m.group(1)
        text = text[: m.start()].rstrip(".")
    return ConfigError(path, text)


def parse_json_into(data, msg: Message, *, allow_unknown_fields: bool = False) -> Message:
    """Parse a JSON-like tree (from YAML or JSON) into ``msg``. snake_case and camelCase field
    names are both accepted, as Envoy accepts them. Errors become ConfigError with the path."""
    try:
        json_format.ParseDict(_prepare(data, ""), msg, ignore_unknown_fields=allow_unknown_fields)
    except json_format.ParseError as exc:
        raise _clean_parse_error(exc) from None
    return msg


def dict_from_message(msg: Message) -> dict:
    """Envoy-style JSON of a message (proto field names, defaults omitted)."""
    return _restore(json_format.MessageToDict(msg, preserving_proto_field_name=False))


def _restore(value):
    if isinstance(value, dict):
        if value.get("@type") == _STRUCT_URL and isinstance(value.get("value"), dict) \
                and _UNKNOWN_MARK in value["value"]:
            inner = dict(value["value"])
            url = inner.pop(_UNKNOWN_MARK)
            return {"@type": url, **inner}
        return {k: _restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Any / TypedStruct


class UnknownExtension:
    """An extension config whose type meshproxy has no schema for (e.g. ``istio.stats``)."""

    __slots__ = ("type_url",)

    def __init__(self, type_url: str):
        self.type_url = type_url

    def __repr__(self) -> str:
        return f"<UnknownExtension {self.type_url}>"


def unpack_any(any_msg, path: str):
    """Unpack an ``Any`` into its message. TypedStruct wrappers are converted through JSON, as
    Envoy does. Returns ``UnknownExtension`` when the type has no descriptor available."""
    type_url = any_msg.type_url
    name = type_name_of(type_url)
    if name == "google.protobuf.Struct":
        st = struct_pb2.Struct()
        any_msg.Unpack(st)
        if _UNKNOWN_MARK in st.fields:
            return UnknownExtension(st.fields[_UNKNOWN_MARK].string_value)
    cls = message_class(name)
    if cls is None:
        return UnknownExtension(type_url)
    msg = cls()
    if not any_msg.Unpack(msg):
        raise ConfigError(path, f"cannot unpack {type_url}")
    if name in TYPED_STRUCT_TYPES:
        inner_name = type_name_of(msg.type_url)
        inner_cls = message_class(inner_name)
        if inner_cls is None:
            return UnknownExtension(msg.type_url)
        inner = inner_cls()
        parse_json_into(json_format.MessageToDict(msg.value), inner)
        return inner
    return msg


def duration(msg, field: str, default: float | None) -> float | None:
    """A google.protobuf.Duration field in seconds, or ``default`` when the field is unset."""
    if not msg.HasField(field):
        return default
    d = getattr(msg, field)
    return d.seconds + d.nanos / 1e9


def wrapped(msg, field: str, default):
    """The value of a wrapper-typed field (UInt32Value, BoolValue, ...) or ``default`` if unset."""
    if not msg.HasField(field):
        return default
    return getattr(msg, field).value
