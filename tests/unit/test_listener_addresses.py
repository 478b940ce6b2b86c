"""Listener addresses without sockets: ``additional_addresses`` resolved and checked as Envoy
1.40 checks them (errors name the field), socket-option inheritance, and the address index the
``use_original_dst`` hand-off searches (Envoy's ``getBalancedHandlerByAddress``)."""

from __future__ import annotations

import json

import pytest

from meshproxy.config.bootstrap import build_server_config, load_bootstrap
from meshproxy.config.errors import ConfigError
from meshproxy.listener.addresses import STATE_BOUND, STATE_LISTENING, STATE_PREBIND
from meshproxy.listener.manager import ListenerManager
from meshproxy.stats.store import Store
from tests.support.proxies import bootstrap, cluster

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def _sa(ip, port, **extra):
    return {"socket_address": {"address": ip, "port_value": port, **extra}}


def _lst(name, ip, port, additional=(), **extra):
    lst = {"name": name, "address": _sa(ip, port), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": TCP_PROXY, "stat_prefix": name, "cluster": "c"}}]}]}
    if additional:
        lst["additional_addresses"] = [a if "address" in a or not a else {"address": a}
                                       for a in additional]
    lst.update(extra)
    return lst


def _config(tmp_path, *listeners):
    p = tmp_path / "b.json"
    p.write_text(json.dumps(bootstrap(list(listeners), [cluster("c", [("127.0.0.1", 1)])])))
    return build_server_config(load_bootstrap(str(p)))


def _error(tmp_path, *listeners) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        _config(tmp_path, *listeners)
    return ei.value


# ---------------------------------------------------------------------- resolution


def test_main_then_additional_addresses_in_order(tmp_path):
    cfg = _config(tmp_path, _lst("l", "0.0.0.0", 15001, [_sa("::", 15001),
                                                         _sa("0:0:0:0:0:0:0:1", 15002)]))
    lc = cfg.listeners[0]
    assert [a.text for a in lc.addresses] == ["0.0.0.0:15001", "[::]:15001", "[::1]:15002"]
    assert lc.address == ("0.0.0.0", 15001) and not lc.unix
    # stats stay under the main address only
    assert lc.stat_name == "0.0.0.0_15001"


def test_stat_name_uses_envoys_spelling_of_the_main_address(tmp_path):
    cfg = _config(tmp_path, _lst("l", "0:0:0:0:0:0:0:0", 80, bind_to_port=False))
    assert cfg.listeners[0].stat_name == "[__]_80"


def test_pipe_as_additional_address(tmp_path):
    cfg = _config(tmp_path, _lst("l", "127.0.0.1", 1,
                                 [{"address": {"pipe": {"path": "/tmp/x.sock"}}}]))
    la = cfg.listeners[0].addresses[1]
    assert la.unix and la.address == "/tmp/x.sock" and la.text == "/tmp/x.sock"


def test_ipv4_compat_per_address(tmp_path):
    cfg = _config(tmp_path, _lst("l", "::", 1, [_sa("::ffff:127.0.0.1", 2, ipv4_compat=True),
                                                _sa("::1", 3)]))
    assert [a.ipv4_compat for a in cfg.listeners[0].addresses] == [False, True, False]


# ---------------------------------------------------------------------- Envoy's checks


@pytest.mark.parametrize("listeners,field,words", [
    ([_lst("a", "not-an-ip", 1)], "listeners[0].address.socket_address.address",
     "malformed IP address: not-an-ip"),
    ([_lst("a", "127.0.0.1", 1, [_sa("10.0.0.999", 1)])],
     "listeners[0].additional_addresses[0].address.socket_address.address",
     "malformed IP address: 10.0.0.999"),
    ([_lst("a", "127.0.0.1", 1, [_sa("::1", 1), _sa("::1", 1, protocol="UDP")])],
     "listeners[0].additional_addresses[1].address.socket_address.protocol",
     "has different socket type"),
    ([_lst("a", "127.0.0.1", 1, [{}])], "listeners[0].additional_addresses[0].address",
     "value is required"),
    ([_lst("a", "127.0.0.1", 1, [{"address": {}}])],
     "listeners[0].additional_addresses[0].address", "address is required"),
    ([_lst("a", "127.0.0.1", 1, [{"envoy_internal_address": {"server_listener_name": "x"}}])],
     "listeners[0].additional_addresses[0].address",
     "use internal_listener field instead of address for internal listeners"),
    ([_lst("a", "127.0.0.1", 1, address=_sa("127.0.0.1", 1, ipv4_compat=True))],
     "listeners[0].address.socket_address.ipv4_compat",
     "Only IPv6 address '::' or valid IPv4-mapped IPv6 address can set ipv4_compat: "
     "127.0.0.1:1"),
    # Envoy checks an additional address's flag against the main address
    ([_lst("a", "0.0.0.0", 1, [_sa("::", 1, ipv4_compat=True)])],
     "listeners[0].additional_addresses[0].address.socket_address.ipv4_compat",
     "can set ipv4_compat: 0.0.0.0:1"),
    ([_lst("a", "::ffff:10.0.0.1", 1, [_sa("::", 2, ipv4_compat=True)])],
     "listeners[0].additional_addresses[0].address.socket_address.ipv4_compat",
     "can set ipv4_compat: [::ffff:10.0.0.1]:1"),
    ([_lst("a", "127.0.0.1", 1, socket_options=[{"level": 1, "name": 8}])],
     "listeners[0].socket_options[0].value", "is required"),
    ([_lst("a", "127.0.0.1", 1, [{"address": _sa("::1", 1), "socket_options": {
        "socket_options": [{"level": 1, "name": 8}]}}])],
     "listeners[0].additional_addresses[0].socket_options.socket_options[0].value",
     "is required"),
])
def test_bad_addresses_name_the_field(tmp_path, listeners, field, words):
    err = _error(tmp_path, *listeners)
    assert err.path == "static_resources." + field
    assert words in err.message


@pytest.mark.parametrize("listeners", [
    [_lst("a", "::", 1, [_sa("127.0.0.1", 2, ipv4_compat=True)])],   # flag unused on IPv4
    [_lst("a", "::ffff:10.0.0.1", 1, [_sa("::1", 2)], address=_sa("::ffff:10.0.0.1", 1,
                                                                  ipv4_compat=True))],
    [_lst("a", "127.0.0.1", 1, [_sa("127.0.0.1", 1)])],           # twice in one listener
    [_lst("a", "127.0.0.1", 1, [_sa("::1", 1), _sa("::1", 1)])],
    [_lst("a", "127.0.0.1", 0), _lst("b", "::1", 0, [_sa("127.0.0.1", 0)])],  # bound, port 0
])
def test_what_envoy_accepts(tmp_path, listeners):
    _config(tmp_path, *listeners)


@pytest.mark.parametrize("listeners,field,texts", [
    ([_lst("a", "127.0.0.1", 1), _lst("b", "::1", 1, [_sa("127.0.0.1", 1)])],
     "listeners[1].additional_addresses[0].address", "[::1]:1,127.0.0.1:1"),
    ([_lst("a", "127.0.0.1", 1, [_sa("::1", 2)]), _lst("b", "::1", 2)],
     "listeners[1].address", "[::1]:2"),
    ([_lst("a", "0.0.0.0", 80, [_sa("::", 80)], bind_to_port=False),
      _lst("b", "::", 80, bind_to_port=False)], "listeners[1].address", "[::]:80"),
    ([_lst("a", "127.0.0.1", 0, bind_to_port=False),
      _lst("b", "::1", 0, [_sa("127.0.0.1", 0)])],
     "listeners[1].additional_addresses[0].address", "[::1]:0,127.0.0.1:0"),
    ([_lst("a", "127.0.0.1", 7), _lst("b", "127.0.0.1", 7, bind_to_port=False)],
     "listeners[1].address", "127.0.0.1:7"),
])
def test_two_listeners_sharing_an_address(tmp_path, listeners, field, texts):
    err = _error(tmp_path, *listeners)
    assert err.path == "static_resources." + field
    assert err.message.startswith(f"error adding listener: 'b' has duplicate address "
                                  f"'{texts}' as existing listener")


# ---------------------------------------------------------------------- socket options


def _opt(value, state=None):
    o = {"level": 1, "name": 8, "int_value": value}
    if state:
        o["state"] = state
    return o


def test_additional_address_socket_options_replace_the_listeners(tmp_path):
    cfg = _config(tmp_path, _lst(
        "a", "127.0.0.1", 1, socket_options=[_opt(1), _opt(2, "STATE_BOUND")],
        additional=[{"address": _sa("::1", 1), "socket_options": {"socket_options": [
                        _opt(3, "STATE_LISTENING")]}},
                    {"address": _sa("::1", 2)},
                    {"address": _sa("::1", 3), "socket_options": {}}]))
    main, override, inherit, empty = cfg.listeners[0].addresses
    assert [o.value for o in main.options(STATE_PREBIND)] == [1]
    assert [o.value for o in main.options(STATE_BOUND)] == [2]
    assert [o.value for o in override.socket_options] == [3]
    assert [o.value for o in override.options(STATE_LISTENING)] == [3]
    assert [o.value for o in inherit.socket_options] == [1, 2]
    assert empty.socket_options == ()


def test_datagram_only_socket_option_is_not_for_tcp(tmp_path):
    cfg = _config(tmp_path, _lst("a", "127.0.0.1", 1, socket_options=[
        {**_opt(1), "type": {"datagram": {}}}, {**_opt(2), "type": {"stream": {}}},
        {"level": 1, "name": 25, "buf_value": "ZXRoMA=="}]))
    assert [o.value for o in cfg.listeners[0].addresses[0].socket_options] == [2, b"eth0"]


# ---------------------------------------------------------------------- hand-off index


class _Ctx:
    loop = None


def _manager(tmp_path, *listeners) -> ListenerManager:
    lm = ListenerManager(_Ctx(), Store())
    for lc in _config(tmp_path, *listeners).listeners:
        lm.add(lc)
    lm._index_addresses()       # what start_all does once the sockets are bound
    return lm


def _target(lm, ip, port, origin="virtualOutbound"):
    t = lm.find_handoff((ip, port), lm.listeners[origin])
    return t.config.name if t is not None else None


def _virtual(name, ip, port, additional=()):
    return _lst(name, ip, port, additional, bind_to_port=False)


def test_handoff_finds_a_listener_by_any_of_its_addresses(tmp_path):
    lm = _manager(tmp_path,
                  _lst("virtualOutbound", "0.0.0.0", 15001, [_sa("::", 15001)],
                       use_original_dst=True),
                  _virtual("0.0.0.0_80", "0.0.0.0", 80, [_sa("::", 80)]),
                  _virtual("10.96.0.20_9000", "10.96.0.20", 9000, [_sa("fd00:96::20", 9000)]))
    assert _target(lm, "10.96.0.10", 80) == "0.0.0.0_80"
    assert _target(lm, "fd00:96::10", 80) == "0.0.0.0_80"          # via [::]:80
    assert _target(lm, "10.96.0.20", 9000) == "10.96.0.20_9000"
    assert _target(lm, "fd00:96::20", 9000) == "10.96.0.20_9000"    # exact additional
    assert _target(lm, "fd00:96::21", 9000) is None                 # stays on the catch-all
    assert _target(lm, "10.0.0.1", 8080) is None
    # addressed to the catch-all itself, on either family: no loop
    assert _target(lm, "10.0.0.2", 15001) is None
    assert _target(lm, "fd00::2", 15001) is None


def test_handoff_wildcard_is_per_family(tmp_path):
    lm = _manager(tmp_path,
                  _lst("virtualOutbound", "0.0.0.0", 15001, [_sa("::", 15001)],
                       use_original_dst=True),
                  _virtual("0.0.0.0_80", "0.0.0.0", 80))
    assert _target(lm, "10.96.0.10", 80) == "0.0.0.0_80"
    assert _target(lm, "fd00:96::10", 80) is None    # no [::]:80 address: not IPv4's wildcard


def test_handoff_to_a_dual_stack_ipv4_compat_address(tmp_path):
    """An ipv4_compat [::] listener also stands for 0.0.0.0 on its port, unless a listener
    has 0.0.0.0 there itself (whatever the order); ::ffff:a.b.c.d stands for a.b.c.d."""
    for order in (0, 1):
        pair = [_virtual("v4", "0.0.0.0", 80),
                _lst("dual", "::", 80, bind_to_port=False,
                     address=_sa("::", 80, ipv4_compat=True))]
        if order:
            pair.reverse()
        lm = _manager(tmp_path, _lst("virtualOutbound", "0.0.0.0", 15001,
                                     use_original_dst=True), *pair)
        assert _target(lm, "10.0.0.1", 80) == "v4"
        assert _target(lm, "fd00::1", 80) == "dual"
    lm = _manager(tmp_path,
                  _lst("virtualOutbound", "0.0.0.0", 15001, use_original_dst=True),
                  _lst("dual", "::", 81, bind_to_port=False,
                       address=_sa("::", 81, ipv4_compat=True)),
                  _lst("mapped", "::", 82, bind_to_port=False,
                       address=_sa("::ffff:10.0.0.7", 82, ipv4_compat=True)),
                  _virtual("notcompat", "::ffff:10.0.0.8", 83))
    assert _target(lm, "10.0.0.1", 81) == "dual"
    assert _target(lm, "10.0.0.7", 82) == "mapped"
    assert _target(lm, "10.0.0.8", 83) is None        # v6only: not an IPv4 destination
    assert _target(lm, "::ffff:10.0.0.8", 83) == "notcompat"
