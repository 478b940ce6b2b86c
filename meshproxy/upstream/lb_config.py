"""A cluster's load-balancing policy: ``lb_policy`` with its ``*_lb_config`` fields, or the
typed ``load_balancing_policy`` extensions (what Envoy Gateway sends), translated into one
``LbSettings``.

``load_balancing_policy`` wins over ``lb_policy`` (Envoy 1.40 accepts both and uses the typed
one). Its ``policies`` are tried in order and the first type Envoy has a factory for is used;
types that are not load-balancing policies at all are skipped, as Envoy skips them, and an
Envoy policy meshproxy does not implement is refused rather than replaced by another.

Checks are Envoy's: PGV on ``ring_hash_lb_config`` / ``maglev_lb_config`` /
``consistent_hashing_lb_config`` whatever the policy, ``minimum_ring_size <=
maximum_ring_size`` and a prime maglev table when the load balancer is made, hostname hashing
only for STRICT_DNS (legacy fields). The typed RingHash/Maglev messages are not PGV-checked by
Envoy 1.40 (measured: ``maximum_ring_size`` 8388609 and hostname hashing on STATIC pass there).
"""

from __future__ import annotations

import dataclasses

from meshproxy.config.errors import ConfigError, join
from meshproxy.config.protos import UnknownExtension, unpack_any, wrapped

LB_POLICIES = {0: "ROUND_ROBIN", 1: "LEAST_REQUEST", 2: "RING_HASH", 3: "RANDOM", 5: "MAGLEV",
               6: "CLUSTER_PROVIDED", 7: "LOAD_BALANCING_POLICY_CONFIG"}
SUPPORTED_LB = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "CLUSTER_PROVIDED", "RING_HASH",
                "MAGLEV")
_TYPED = "envoy.extensions.load_balancing_policies."
TYPED_POLICIES = {
    _TYPED + "round_robin.v3.RoundRobin": "ROUND_ROBIN",
    _TYPED + "least_request.v3.LeastRequest": "LEAST_REQUEST",
    _TYPED + "random.v3.Random": "RANDOM",
    _TYPED + "ring_hash.v3.RingHash": "RING_HASH",
    _TYPED + "maglev.v3.Maglev": "MAGLEV",
    _TYPED + "cluster_provided.v3.ClusterProvided": "CLUSTER_PROVIDED",
}
MAX_RING = 8 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class HashLbConfig:
    """RING_HASH / MAGLEV settings with Envoy's defaults. ``hash_policy`` is the load
    balancer's own (typed ``consistent_hashing_lb_config.hash_policy``), used before the
    route's."""
    kind: str                         # "RING_HASH" or "MAGLEV"
    min_ring_size: int = 1024
    max_ring_size: int = MAX_RING
    murmur: bool = False              # hash_function: MURMUR_HASH_2
    table_size: int = 65537
    use_hostname: bool = False
    hash_policy: object = None


@dataclasses.dataclass(frozen=True)
class LbSettings:
    policy: str
    lr_choice_count: int = 2
    lr_active_request_bias: float = 1.0
    hash_lb: HashLbConfig | None = None


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


def build_lb_settings(c, ctype: str, path: str) -> LbSettings:
    """``c`` is the Cluster message; ``ctype`` its type name (STATIC, STRICT_DNS, ...)."""
    legacy = _legacy(c, ctype, path)
    if not c.HasField("load_balancing_policy"):
        return legacy
    return _typed(c.load_balancing_policy, join(path, "load_balancing_policy"))


# ---------------------------------------------------------------------- lb_policy


def _legacy(c, ctype: str, path: str) -> LbSettings:
    lb = LB_POLICIES.get(c.lb_policy, str(c.lb_policy))
    typed = c.HasField("load_balancing_policy")
    if not typed:
        if ctype == "ORIGINAL_DST" and lb != "CLUSTER_PROVIDED":
            raise ConfigError(join(path, "lb_policy"),
                              f"cluster: LB policy {lb} is not valid for Cluster type "
                              f"ORIGINAL_DST. Only 'CLUSTER_PROVIDED' is allowed with cluster "
                              f"type 'ORIGINAL_DST'")
        if lb not in SUPPORTED_LB:
            raise ConfigError(join(path, "lb_policy"),
                              f"lb_policy {lb} is not supported by meshproxy yet")
    lrc = c.least_request_lb_config
    choice = wrapped(lrc, "choice_count", 2)
    if choice < 2:
        raise ConfigError(join(path, "least_request_lb_config.choice_count"),
                          "value must be greater than or equal to 2")
    bias = lrc.active_request_bias.default_value if lrc.HasField("active_request_bias") else 1.0
    rh = c.ring_hash_lb_config
    rpath = join(path, "ring_hash_lb_config")
    for f in ("minimum_ring_size", "maximum_ring_size"):
        if wrapped(rh, f, 0) > MAX_RING:
            raise ConfigError(join(rpath, f), f"value must be less than or equal to {MAX_RING}")
    if rh.hash_function not in (0, 1):
        raise ConfigError(join(rpath, "hash_function"),
                          "value must be one of the defined enum values")
    mg = c.maglev_lb_config
    if wrapped(mg, "table_size", 0) > 5000011:
        raise ConfigError(join(path, "maglev_lb_config.table_size"),
                          "value must be less than or equal to 5000011")
    chc = c.common_lb_config.consistent_hashing_lb_config
    cpath = join(path, "common_lb_config.consistent_hashing_lb_config")
    if chc.use_hostname_for_hashing and ctype != "STRICT_DNS":
        # ClusterImplBase: only STRICT_DNS hosts have a hostname to hash (whatever the policy).
        raise ConfigError(join(cpath, "use_hostname_for_hashing"),
                          f"Cannot use hostname for consistent hashing loadbalancing for "
                          f"cluster of type: 'envoy.cluster.{ctype.lower()}'")
    if chc.HasField("hash_balance_factor") and chc.hash_balance_factor.value < 100:
        raise ConfigError(join(cpath, "hash_balance_factor"),
                          "value must be greater than or equal to 100")
    if typed:
        return LbSettings(lb)
    hash_lb = None
    if lb in ("RING_HASH", "MAGLEV"):
        _no_bounded_load(chc, cpath)
    if lb == "RING_HASH":
        hash_lb = _ring(wrapped(rh, "minimum_ring_size", 1024),
                        wrapped(rh, "maximum_ring_size", MAX_RING), rh.hash_function == 1,
                        chc.use_hostname_for_hashing, None, rpath)
    elif lb == "MAGLEV":
        hash_lb = _maglev(wrapped(mg, "table_size", 65537), chc.use_hostname_for_hashing, None,
                          join(path, "maglev_lb_config.table_size"))
    return LbSettings(lb, choice, bias, hash_lb)


def _no_bounded_load(chc, path: str) -> None:
    if chc.HasField("hash_balance_factor"):
        raise ConfigError(join(path, "hash_balance_factor"),
                          "bounded-load hashing is not supported by meshproxy yet")


def _ring(lo, hi, murmur, use_hostname, hash_policy, path) -> HashLbConfig:
    if lo > hi:
        raise ConfigError(path, f"ring hash: minimum_ring_size ({lo}) > maximum_ring_size ({hi})")
    return HashLbConfig("RING_HASH", min_ring_size=lo, max_ring_size=hi, murmur=murmur,
                        use_hostname=use_hostname, hash_policy=hash_policy)


def _maglev(size, use_hostname, hash_policy, path) -> HashLbConfig:
    if not is_prime(size):
        # Envoy 1.40 accepts 1 and then divides by zero; refused here.
        raise ConfigError(path, "The table size of maglev must be prime number")
    return HashLbConfig("MAGLEV", table_size=size, use_hostname=use_hostname,
                        hash_policy=hash_policy)


# ---------------------------------------------------------------------- load_balancing_policy


def _typed(lbp, path: str) -> LbSettings:
    for i, p in enumerate(lbp.policies):
        ppath = f"{join(path, 'policies')}[{i}].typed_extension_config"
        tec = p.typed_extension_config
        name = tec.typed_config.type_url.rsplit("/", 1)[-1]
        if name == "google.protobuf.Struct":
            # An Any whose schema meshproxy lacks arrives as a marked Struct: name its type.
            unknown = unpack_any(tec.typed_config, join(ppath, "typed_config"))
            if isinstance(unknown, UnknownExtension):
                name = unknown.type_url.rsplit("/", 1)[-1]
        kind = TYPED_POLICIES.get(name)
        if kind is None:
            if name.startswith(_TYPED):
                raise ConfigError(join(ppath, "typed_config"),
                                  f"load balancing policy {name} is not supported by meshproxy "
                                  f"yet")
            continue          # not a load balancer: Envoy looks at the next one
        msg = unpack_any(tec.typed_config, join(ppath, "typed_config"))
        if isinstance(msg, UnknownExtension):
            continue
        return _typed_settings(kind, msg, join(ppath, "typed_config"))
    names = ", ".join(p.typed_extension_config.name for p in lbp.policies)
    raise ConfigError(path, f"cluster: didn't find a registered load balancer factory "
                            f"implementation for cluster with names from [{names}]")


def _typed_settings(kind: str, msg, path: str) -> LbSettings:
    if kind == "LEAST_REQUEST":
        choice = wrapped(msg, "choice_count", 2)
        bias = msg.active_request_bias.default_value if msg.HasField("active_request_bias") \
            else 1.0
        return LbSettings(kind, choice, bias)
    if kind not in ("RING_HASH", "MAGLEV"):
        return LbSettings(kind)
    chc = msg.consistent_hashing_lb_config
    cpath = join(path, "consistent_hashing_lb_config")
    hash_policy = None
    if len(chc.hash_policy):
        from meshproxy.upstream.hash_policy import build_hash_policy
        hash_policy = build_hash_policy(chc.hash_policy, cpath)
    if kind == "RING_HASH":
        # RingHash keeps deprecated copies of the consistent-hashing fields at top level.
        use_hostname = chc.use_hostname_for_hashing if msg.HasField(
            "consistent_hashing_lb_config") else msg.use_hostname_for_hashing
        if msg.HasField("consistent_hashing_lb_config"):
            _no_bounded_load(chc, cpath)
        else:
            _no_bounded_load(msg, path)
        return LbSettings(kind, hash_lb=_ring(
            wrapped(msg, "minimum_ring_size", 1024), wrapped(msg, "maximum_ring_size", MAX_RING),
            msg.hash_function == 2, use_hostname, hash_policy, path))   # typed MURMUR_HASH_2
    _no_bounded_load(chc, cpath)
    return LbSettings(kind, hash_lb=_maglev(wrapped(msg, "table_size", 65537),
                                            chc.use_hostname_for_hashing, hash_policy,
                                            join(path, "table_size")))
