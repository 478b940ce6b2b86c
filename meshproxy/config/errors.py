"""Config errors that name the offending field (DESIGN.md: "errors in config name the field")."""


class ConfigError(Exception):
    """A configuration the proxy refuses. ``path`` is the field path, e.g.
    ``static_resources.clusters[2].lb_policy``; the message says what is wrong there."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


def join(path: str, field: str) -> str:
    """Extend a field path: join("a.b", "c") -> "a.b.c", join("a", "[3]") -> "a[3]"."""
    if not path:
        return field
    if field.startswith("["):
        return path + field
    return f"{path}.{field}"
