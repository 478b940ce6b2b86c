"""The addresses a listener listens on: ``address`` plus ``additional_addresses``
(``envoy.config.listener.v3.AdditionalAddress``), as Envoy's ``ListenerImpl`` resolves them.

Istio's dual-stack mode gives every sidecar listener one address per family (virtualOutbound on
``0.0.0.0:15001`` and ``[::]:15001``, ``0.0.0.0_80`` on ``0.0.0.0:80`` and ``[::]:80``). Each
address gets its own socket; connections from all of them belong to the one listener (same
filter chains, same ``listener.<main address>.*`` stats). What Envoy 1.40 checks, and so what
this checks (``listener_impl.cc``, ``listener_manager_impl.cc``):

- every address resolves (a malformed IP is ``malformed IP address: X``) and has the socket
  type of the main one;
- ``ipv4_compat`` only on ``::`` or a v4-mapped IPv6 address. Envoy checks the flag of each
  additional address against the *main* address (``checkIpv4CompatAddress(address, ...)``), so
  ``0.0.0.0`` plus ``[::]`` with ``ipv4_compat`` is refused; kept as Envoy does it;
- two listeners may not share an address (``hasDuplicatedAddress``; a port-0 address of a
  listener that binds is exempt). The same address twice within one listener is accepted, and
  with SO_REUSEPORT both sockets bind, as in Envoy;
- ``socket_options`` of an additional address replace the listener's for that socket when the
  field is present (even empty); otherwise the listener's apply.

Envoy names an address with ``asString()``: ``127.0.0.1:80``, ``[::1]:80``, a pipe's path.
"""

from __future__ import annotations

import logging
import socket

from meshproxy.config.errors import ConfigError, join
from meshproxy.upstream.cluster_config import socket_address

log = logging.getLogger("meshproxy.connection")

STATE_PREBIND, STATE_BOUND, STATE_LISTENING = 0, 1, 2


class SocketOption:
    """One literal ``envoy.config.core.v3.SocketOption``: setsockopt(level, name, value) at
    ``state`` (before bind, after bind, after listen)."""

    __slots__ = ("level", "name", "value", "state")

    def __init__(self, level, name, value, state):
        self.level = level
        self.name = name
        self.value = value
        self.state = state

    def apply(self, sock) -> bool:
        try:
            sock.setsockopt(self.level, self.name, self.value)
            return True
        except OSError as exc:
            log.warning("Setting %d/%d option on socket failed: %s", self.level, self.name,
                        exc.strerror or exc)
            return False

    def __repr__(self):
        return f"<SocketOption {self.level}/{self.name}={self.value!r} state={self.state}>"


class ListenAddress:
    """One address of a listener. ``address`` is (ip, port) or a pipe path; ``ipv4_compat``
    makes an IPv6 socket take IPv4 connections too (IPV6_V6ONLY off)."""

    __slots__ = ("address", "unix", "ipv4_compat", "socket_options", "text")

    def __init__(self, address, unix=False, ipv4_compat=False, socket_options=()):
        self.address = address
        self.unix = unix
        self.ipv4_compat = ipv4_compat
        self.socket_options = tuple(socket_options)
        self.text = address_text(address, unix)

    @property
    def port(self) -> int:
        return 0 if self.unix else self.address[1]

    def options(self, state):
        return [o for o in self.socket_options if o.state == state]

    def __repr__(self):
        compat = " ipv4_compat" if self.ipv4_compat else ""
        return f"<ListenAddress {self.text}{compat}>"


def normal_ip(ip: str) -> str:
    """The IP as ``inet_ntop`` writes it (what Envoy prints and compares)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return socket.inet_ntop(family, socket.inet_pton(family, ip))


def address_text(address, unix: bool) -> str:
    """Envoy's ``Address::Instance::asString()``."""
    if unix:
        return str(address)
    ip, port = address
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def v4_mapped(ip: str):
    """``a.b.c.d`` for an IPv4-mapped IPv6 address ``::ffff:a.b.c.d``, else None."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return None


def _resolve(addr, path: str, main_unix=None) -> ListenAddress:
    which = addr.WhichOneof("address")
    if which == "envoy_internal_address":
        raise ConfigError(path, "use internal_listener field instead of address for internal "
                                "listeners")
    if which == "socket_address" and addr.socket_address.protocol != 0 and main_unix is not None:
        raise ConfigError(join(path, "socket_address.protocol"),
                          "has different socket type. The listener only support same socket "
                          "type for all the addresses.")
    address, unix = socket_address(addr, path)
    if unix:
        return ListenAddress(address, True)
    ip, port = address
    try:
        ip = normal_ip(ip)
    except OSError:
        raise ConfigError(join(path, "socket_address.address"),
                          f"malformed IP address: {address[0]}") from None
    return ListenAddress((ip, port), False, addr.socket_address.ipv4_compat)


def _check_ipv4_compat(main: ListenAddress, flag: bool, path: str) -> None:
    """Envoy's ``checkIpv4CompatAddress``: ``flag`` may only be set when ``main`` is ``::``
    or an IPv4-mapped address that is itself dual-stack."""
    if not flag or main.unix:
        return
    ip = main.address[0]
    if ":" in ip and (ip == "::" or (main.ipv4_compat and v4_mapped(ip) is not None)):
        return
    raise ConfigError(join(path, "socket_address.ipv4_compat"),
                      f"Only IPv6 address '::' or valid IPv4-mapped IPv6 address can set "
                      f"ipv4_compat: {main.text}")


def build_socket_options(options, path: str) -> tuple:
    out = []
    for i, o in enumerate(options):
        opath = f"{path}[{i}]"
        which = o.WhichOneof("value")
        if which is None:
            raise ConfigError(join(opath, "value"), "is required")
        if o.HasField("type") and not o.type.HasField("stream") and o.type.HasField("datagram"):
            continue        # a UDP-only option: not for a TCP listener's socket
        value = o.int_value if which == "int_value" else bytes(o.buf_value)
        if which == "int_value" and not -2 ** 31 <= value < 2 ** 31:
            value = value & 0xFFFFFFFF
            value = value - 2 ** 32 if value >= 2 ** 31 else value   # Envoy passes an int
        out.append(SocketOption(o.level, o.name, value, o.state))
    return tuple(out)


def build_listen_addresses(lst, path: str) -> tuple:
    """(main, *additional) ListenAddress of a Listener message, checked as Envoy checks them."""
    main_opts = build_socket_options(lst.socket_options, join(path, "socket_options"))
    main = _resolve(lst.address, join(path, "address"))
    main.socket_options = main_opts
    _check_ipv4_compat(main, main.ipv4_compat, join(path, "address"))
    out = [main]
    for i, aa in enumerate(lst.additional_addresses):
        apath = f"{join(path, 'additional_addresses')}[{i}]"
        if not aa.HasField("address"):
            # Envoy 1.40 crashes on this; a refusal naming the field is the useful answer.
            raise ConfigError(join(apath, "address"), "value is required")
        la = _resolve(aa.address, join(apath, "address"), main.unix)
        _check_ipv4_compat(main, la.ipv4_compat and not la.unix, join(apath, "address"))
        if aa.HasField("socket_options"):
            la.socket_options = build_socket_options(
                aa.socket_options.socket_options, join(apath, "socket_options.socket_options"))
        else:
            la.socket_options = main_opts
        out.append(la)
    return tuple(out)


def handoff_keys(la: ListenAddress, bound=None) -> list:
    """The keys under which Envoy's connection handler finds this address's listener for a
    ``use_original_dst`` hand-off (``tcp_listener_map_by_address_``): the address as bound,
    and for a dual-stack IPv6 address also its IPv4 form (``::`` -> ``0.0.0.0``,
    ``::ffff:a.b.c.d`` -> ``a.b.c.d``), marked ``compat``."""
    if la.unix:
        return []
    ip, port = la.address
    if bound is not None:
        port = bound[1]
    keys = [((ip, port), False)]
    if ":" in ip and la.ipv4_compat:
        if ip == "::":
            keys.append((("0.0.0.0", port), True))
        else:
            v4 = v4_mapped(ip)
            if v4 is not None:
                keys.append(((v4, port), True))
    return keys


def duplicated_address(existing, new, existing_texts=None) -> ListenAddress | None:
    """Envoy's ``ListenerImpl::hasDuplicatedAddress`` (``existing`` and ``new`` are
    ListenerConfigs): the first address of ``new`` that ``existing`` also has. A port-0 IP
    address is exempt when ``existing`` binds (each gets a port of its own)."""
    texts = existing_texts if existing_texts is not None else \
        {a.text for a in existing.addresses}
    for a in new.addresses:
        if a.unix or a.port != 0 or not existing.bind_to_port:
            if a.text in texts:
                return a
    return None


def check_unique_addresses(configs, paths) -> None:
    """Refuse a listener that shares an address with an earlier one, with Envoy's message
    (``ListenerManagerImpl::setNewOrDrainingSocketFactory``)."""
    texts = [{a.text for a in cfg.addresses} for cfg in configs]
    for i, cfg in enumerate(configs):
        for j in range(i):
            dup = duplicated_address(configs[j], cfg, texts[j])
            if dup is None:
                continue
            k = cfg.addresses.index(dup)
            field = "address" if k == 0 else f"additional_addresses[{k - 1}].address"
            listed = ",".join(a.text for a in cfg.addresses)
            raise ConfigError(join(paths[i], field),
                              f"error adding listener: '{cfg.name}' has duplicate address "
                              f"'{listed}' as existing listener, to check if the listener has "
                              f"duplicated addresses with other listeners or "
                              f"'enable_reuse_port' is set to 'false' for the listener")
