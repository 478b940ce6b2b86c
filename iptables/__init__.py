"""meshproxy-iptables: the istio-init role (traffic capture rules for a sidecar)."""
