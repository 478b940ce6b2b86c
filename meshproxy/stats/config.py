"""The bootstrap's ``stats_config`` (``envoy.config.metrics.v3.StatsConfig``) and the
``--stats-tag`` flags, translated once into a ``StatsConfig``: which stats exist
(``stats_matcher``) and how their names split into tags (``stats_tags``,
``use_all_default_tags``).

Istio's bootstrap relies on both: ``use_all_default_tags: false`` with its own tag regexes
(``^cluster(\\.(.+);)`` ...) and an ``inclusion_list`` that keeps only ``cluster_manager``,
``listener_manager``, ``server``, ``cluster.xds-grpc`` ... A stat the matcher rejects is never
created in Envoy, so it is in no admin output at all (docs: ``config.metrics.v3.StatsMatcher``).

Envoy evaluates the matcher when a stat is created; meshproxy's stats are plain ints in blocks,
so the decision is taken (and cached per name) when the admin API renders them.
"""

from __future__ import annotations

from meshproxy.config.errors import ConfigError
from meshproxy.stats.re2 import Re2Error, compile_re2
from meshproxy.stats.tags import (DEFAULT_TAG_NAMES, FixedTag, TagProducer, custom_extractor,
                                  default_extractors)


class StringMatcher:
    """``envoy.type.matcher.v3.StringMatcher`` on stat names (safe_regex is a full match)."""

    __slots__ = ("kind", "value", "ignore_case", "rx")

    def __init__(self, kind: str, value: str, ignore_case: bool = False, rx=None):
        self.kind = kind
        self.ignore_case = ignore_case and kind != "safe_regex"
        self.value = value.lower() if self.ignore_case else value
        self.rx = rx

    def match(self, s: str) -> bool:
        if self.ignore_case:
            s = s.lower()
        k = self.kind
        if k == "prefix":
            return s.startswith(self.value)
        if k == "suffix":
            return s.endswith(self.value)
        if k == "exact":
            return s == self.value
        if k == "contains":
            return self.value in s
        return self.rx.fullmatch(s) is not None

    def __repr__(self):
        return f"<StringMatcher {self.kind} {self.value!r}>"


class StatsMatcher:
    """``reject_all`` / ``inclusion_list`` / ``exclusion_list``; ``rejects(name)``."""

    def __init__(self, mode: str = "all", patterns=()):
        self.mode = mode          # "all" (accept everything), "none", "include", "exclude"
        self.patterns = tuple(patterns)

    def rejects(self, name: str) -> bool:
        mode = self.mode
        if mode == "all":
            return False
        if mode == "none":
            return True
        hit = any(p.match(name) for p in self.patterns)
        return not hit if mode == "include" else hit

    def __repr__(self):
        return f"<StatsMatcher {self.mode} {len(self.patterns)} patterns>"


class StatsConfig:
    """What the admin renderers need to know about stat naming; caches per stat name."""

    def __init__(self, producer: TagProducer | None = None, matcher: StatsMatcher | None = None):
        self.producer = producer or TagProducer()
        self.matcher = matcher or StatsMatcher()
        self._rejected: dict[str, bool] = {}

    def rejects(self, name: str) -> bool:
        r = self._rejected.get(name)
        if r is None:
            r = self._rejected[name] = self.matcher.rejects(name)
        return r

    def tags(self, name: str) -> tuple[str, list]:
        return self.producer.produce(name)

    def __repr__(self):
        return f"<StatsConfig {self.matcher!r}>"


def _string_matcher(m, path: str) -> StringMatcher:
    kind = m.WhichOneof("match_pattern")
    if kind is None:
        raise ConfigError(path, "StringMatcher has no match_pattern")
    if kind == "safe_regex":
        try:
            rx = compile_re2(m.safe_regex.regex)
        except Re2Error as exc:
            raise ConfigError(path + ".safe_regex.regex",
                              f"Invalid regex '{m.safe_regex.regex}': {exc}") from None
        return StringMatcher(kind, m.safe_regex.regex, False, rx)
    if kind == "custom":
        raise ConfigError(path + ".custom", "custom string matchers are not supported")
    return StringMatcher(kind, getattr(m, kind), m.ignore_case)


def _matcher(sm, path: str) -> StatsMatcher:
    which = sm.WhichOneof("stats_matcher")
    if which is None:
        return StatsMatcher()
    if which == "reject_all":
        return StatsMatcher("none" if sm.reject_all else "all")
    lst = getattr(sm, which)
    pats = [_string_matcher(p, f"{path}.{which}.patterns[{i}]")
            for i, p in enumerate(lst.patterns)]
    return StatsMatcher("include" if which == "inclusion_list" else "exclude", pats)


def build_stats_config(stats_config=None, cli_tags=(), path: str = "stats_config") -> StatsConfig:
    """Translate a ``StatsConfig`` proto (or None) and ``--stats-tag name:value`` flags, in
    Envoy's order: default extractors (unless ``use_all_default_tags`` is false), then the
    command-line tags, then each ``stats_tags`` entry (``TagProducerImpl``'s constructor)."""
    extractors = []
    sc = stats_config
    use_defaults = True
    if sc is not None and sc.HasField("use_all_default_tags"):
        use_defaults = sc.use_all_default_tags.value
    if use_defaults:
        extractors.extend(default_extractors())
    for tag in cli_tags:
        name, _, value = tag.partition(":")
        extractors.append(FixedTag(name, value))
    matcher = None
    if sc is not None:
        for i, spec in enumerate(sc.stats_tags):
            p = f"{path}.stats_tags[{i}]"
            name = spec.tag_name
            if not name:
                raise ConfigError(p + ".tag_name", "tag_name cannot be empty")
            kind = spec.WhichOneof("tag_value")
            if kind == "fixed_value":
                extractors.append(FixedTag(name, spec.fixed_value))
            elif spec.regex:
                try:
                    extractors.append(custom_extractor(name, spec.regex))
                except Re2Error as exc:
                    raise ConfigError(p + ".regex", f"Invalid regex '{spec.regex}': {exc}") \
                        from None
            else:
                if name not in DEFAULT_TAG_NAMES:
                    raise ConfigError(p, "No regex specified for tag specifier and no default "
                                         f"regex for name: '{name}'")
                extractors.extend(default_extractors(only=name))
        if sc.HasField("stats_matcher"):
            matcher = _matcher(sc.stats_matcher, path + ".stats_matcher")
    return StatsConfig(TagProducer(extractors), matcher)


def from_bootstrap(bootstrap, cli_tags=()) -> StatsConfig:
    """The StatsConfig of a ``Bootstrap`` proto."""
    sc = bootstrap.stats_config if bootstrap.HasField("stats_config") else None
    return build_stats_config(sc, cli_tags)
