"""meshproxy: a sidecar data-plane proxy that speaks Envoy's v3 configuration language."""

__version__ = "0.1.0"
