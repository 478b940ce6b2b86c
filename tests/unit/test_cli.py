"""The command line accepts Envoy's flags with Envoy's validation (exit 1 on a bad one)."""

from __future__ import annotations

import pytest

from meshproxy import cli, log


ISTIO_ARGS = ["-c", "etc/istio/proxy/envoy-rev.json", "--drain-time-s", "45", "--drain-strategy",
              "immediate", "--local-address-ip-version", "v4", "--file-flush-interval-msec",
              "1000", "--disable-hot-restart", "--allow-unknown-static-fields", "--log-format",
              "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t", "-l", "warning",
              "--component-log-level", "misc:error", "--concurrency", "2"]


def test_pilot_agent_command_line_parses():
    opts, version = cli.parse_args(ISTIO_ARGS)
    assert not version
    assert opts.config_path == "etc/istio/proxy/envoy-rev.json"
    assert opts.drain_time_s == 45
    assert opts.drain_strategy == "immediate"
    assert opts.local_address_ip_version == "v4"
    assert opts.file_flush_interval_msec == 1000
    assert opts.disable_hot_restart and opts.allow_unknown_static_fields
    assert opts.log_level == "warning"
    assert opts.component_log_level == {"misc": log.LEVELS["error"]}
    assert opts.concurrency == 2
    assert opts.log_format_set


def test_defaults_are_envoys():
    opts, _ = cli.parse_args(["-c", "x.yaml"])
    assert (opts.mode, opts.log_level, opts.drain_time_s, opts.parent_shutdown_time_s,
            opts.drain_strategy, opts.local_address_ip_version, opts.file_flush_interval_msec,
            opts.concurrency) == ("serve", "info", 600, 900, "gradual", "v4", 10000, 1)
    assert opts.log_format == "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v"


@pytest.mark.parametrize("argv", [
    ["--config-path", "a.yaml", "--config-yaml", "{}", "--mode", "validate"],
    ["-c", "a", "--base-id", "7", "--restart-epoch", "0", "--parent-shutdown-time-s", "5"],
    ["-c", "a", "--service-cluster", "c", "--service-node", "n", "--service-zone", "z"],
    ["-c", "a", "--log-level", "warn", "--log-path", "/dev/null", "--use-dynamic-base-id"],
    ["-c", "a", "--stats-tag", "mesh:one", "--stats-tag", "zone:b", "--cpuset-threads"],
])
def test_accepted_flags(argv):
    opts, _ = cli.parse_args(argv)
    assert opts.config_path in ("a", "a.yaml")


@pytest.mark.parametrize("argv,message", [
    (["--no-such-flag"], "PARSE ERROR"),
    (["-c", "a", "--mode", "bogus"], "unknown mode 'bogus'"),
    (["-c", "a", "-l", "loud"], "invalid log level specified 'loud'"),
    (["-c", "a", "--drain-strategy", "sometimes"], "unknown drain-strategy 'sometimes'"),
    (["-c", "a", "--local-address-ip-version", "v5"], "unknown IP address version 'v5'"),
    (["-c", "a", "--concurrency", "abc"], "Couldn't read argument value from string 'abc'"),
    (["-c", "a", "--component-log-level", "nosuch:debug"], "invalid component specified 'nosuch'"),
    (["-c", "a", "--component-log-level", "upstream:loud"], "invalid log level specified 'loud'"),
    (["-c", "a", "--stats-tag", "bad"], "misformatted stats-tag 'bad'"),
])
def test_bad_command_lines_exit_1(argv, message, capsys):
    assert cli.main(argv) == 1
    assert message in capsys.readouterr().err


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert "version:" in capsys.readouterr().out


def test_validate_mode_ok_and_error(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("static_resources: {clusters: [{name: c, connect_timeout: 1s}]}\n")
    assert cli.main(["--mode", "validate", "-c", str(good), "-l", "off"]) == 0
    assert f"configuration '{good}' OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("static_resources: {clusters: [{name: c, lb_policy: FOO}]}\n")
    assert cli.main(["--mode", "validate", "-c", str(bad), "-l", "off"]) == 1
    assert "OK" not in capsys.readouterr().out


def test_no_config_is_an_error(capsys):
    assert cli.main(["--mode", "validate", "-l", "critical"]) == 1
    assert "At least one of --config-path or --config-yaml" in capsys.readouterr().err
