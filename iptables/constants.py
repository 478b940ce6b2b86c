"""Names and numbers shared by the rule generator and the command line.

Values are Istio's, from istio/istio tools/istio-iptables/pkg/constants/constants.go (the
revision the goldens come from, 86c9f01).  They are part of the contract with the proxy: the
proxy listens on the capture ports, runs as the exempted uid/gid and binds 127.0.0.6 / ::6 for
inbound passthrough, so changing one here means changing the proxy too.
"""

from __future__ import annotations

# Chains Istio creates.  The ISTIO_ prefix is load-bearing: leftover detection and cleanup
# (pkg/capture/helper.go HasIstioLeftovers, pkg/builder/helper.go UndoRules) select by it.
ISTIO_OUTPUT = "ISTIO_OUTPUT"
ISTIO_OUTPUT_DNS = "ISTIO_OUTPUT_DNS"
ISTIO_INBOUND = "ISTIO_INBOUND"
ISTIO_DIVERT = "ISTIO_DIVERT"
ISTIO_TPROXY = "ISTIO_TPROXY"
ISTIO_REDIRECT = "ISTIO_REDIRECT"
ISTIO_IN_REDIRECT = "ISTIO_IN_REDIRECT"
ISTIO_DROP = "ISTIO_DROP"

# Never created or deleted: the kernel's chains and the standard targets (constants.go
# BuiltInChainsAndTargetsMap).
BUILTIN_CHAINS_AND_TARGETS = frozenset(
    {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING", "ACCEPT", "RETURN", "DROP"}
)

# Stand-in for an address that differs between the IPv4 and the IPv6 rule set
# (constants.go IPVersionSpecific; builder AppendVersionedRule substitutes it).
IP_VERSION_SPECIFIC = "PLACEHOLDER_IP_VERSION_SPECIFIC"

# TPROXY mode marks proxy -> app traffic on loopback with this so ISTIO_INBOUND does not capture
# it a second time (constants.go OutboundMark).
OUTBOUND_MARK = "1338"

# pilot-agent's DNS proxy (constants.go IstioAgentDNSListenerPort).
AGENT_DNS_PORT = "15053"

DEFAULT_PROXY_UID = "1337"

# Sources the proxy binds for inbound passthrough (run.go: "127.0.0.6/::6 is bind connect from
# inbound passthrough cluster"); the rules let them through untouched.
INBOUND_PASSTHROUGH_V4 = "127.0.0.6/32"
INBOUND_PASSTHROUGH_V6 = "::6/128"
IPV6_LOOPBACK = "::1/128"

# iptables-save output of an unused table has no rules; tables Istio's state parser always knows.
DEFAULT_TABLES = ("filter", "nat", "mangle", "raw")

# Limit on owner groups included by one rule (tools/common/config/validation.go): they are all
# ANDed into a single rule and kernels cap the number of matches per rule.
MAX_OWNER_GROUPS_INCLUDE = 64

# istio-iptables exits with this when --run-validation fails (constants.go ValidationErrorCode).
VALIDATION_ERROR_CODE = 126
