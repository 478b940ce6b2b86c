"""Configuration: Envoy v3 protobufs in, immutable runtime objects out."""

from meshproxy.config.errors import ConfigError

__all__ = ["ConfigError"]
