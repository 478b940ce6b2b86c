"""Turning per-round measurements into the Markdown report and the PNG plot.

Each number in a table is the median over rounds (CPU also shows min-max). Ratios to Envoy are
computed per round, from runs that were minutes apart at most, and the median of those ratios
is shown: the machine's drift (other tenants, thermal, frequency) cancels in a ratio, not
across rounds.
"""

from __future__ import annotations

import statistics

BASELINE = "envoy"
NO_PROXY = "no-proxy"


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _fmt(x, digits=1):
    if x is None:
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _ratio_per_round(records, proxy, key):
    """Median over rounds of proxy[key] / envoy[key] in the same round."""
    by_round = {}
    for r in records:
        if r.get(key) is not None and not r.get("error"):
            by_round.setdefault(r["round"], {})[r["proxy"]] = r[key]
    ratios = [rr[proxy] / rr[BASELINE] for rr in by_round.values()
              if proxy in rr and rr.get(BASELINE)]
    return _med(ratios), ratios


def summarise(records: list[dict], proxies: list[str], rss: dict) -> list[dict]:
    rows = []
    for p in proxies:
        mine = [r for r in records if r["proxy"] == p]
        closed = [r for r in mine if r["phase"] == "closed" and not r.get("error")]
        opened = [r for r in mine if r["phase"] == "open" and not r.get("error")]
        if not closed:
            errs = [r["error"] for r in mine if r.get("error")]
            rows.append({"proxy": p, "error": errs[0] if errs else "no runs"})
            continue
        cpu = [r["cpu_us"] for r in closed if r["cpu_us"] is not None]
        row = {"proxy": p, "rounds": len(closed),
               "cpu_us": _med(cpu), "cpu_min": min(cpu) if cpu else None,
               "cpu_max": max(cpu) if cpu else None,
               "upstream_cpu_us": _med([r["upstream_cpu_us"] for r in closed]),
               "rps": _med([r["rps"] for r in closed]), "mbps": _med([r["mbps"] for r in closed]),
               "noise": _med([r["noise"] for r in closed]),
               "cpu_us_at_rate": _med([r["cpu_us_at_rate"] for r in opened]),
               "p50": _med([r["p50"] for r in opened]), "p90": _med([r["p90"] for r in opened]),
               "p99": _med([r["p99"] for r in opened]),
               "rss_mb": rss[p] / 1e6 if rss.get(p) else None}
        for key, out in (("cpu_us", "cpu_ratio"), ("rps", "rps_ratio"),
                         ("cpu_us_at_rate", "cpu_at_rate_ratio"), ("p50", "p50_ratio"),
                         ("p99", "p99_ratio")):
            row[out], per = _ratio_per_round(records, p, key)
            if key == "cpu_us":
                row["cpu_ratios"] = per
        row["rss_ratio"] = (rss[p] / rss[BASELINE]) if rss.get(p) and rss.get(BASELINE) else None
        rows.append(row)
    return rows


def markdown(result: dict) -> str:
    env = result["environment"]
    out = [f"# meshproxy benchmark, {result['started']}", "",
           f"Command: `{result['command']}`", "",
           f"Machine: {env['cpu']} x{env['nproc']}, kernel {env['kernel']}; "
           f"proxy pinned to CPU {env['proxy_cpus'] or 'any'}, load generators and upstream to "
           f"CPU {env['load_cpus'] or 'any'}. {env['versions']}", "",
           f"Closed loop (CPU, req/s): h2load, HTTP/1.1 keep-alive, a fixed request count per "
           f"run, {result['rounds']} rounds. Open loop (latency, CPU @rate): {result['rate']} "
           f"req/s, {result['open_requests']} requests per run, {result['latency_rounds']} rounds, "
           f"latency from when each request fell due. Proxies alternate within a round "
           f"(A B C D, then D C B A, ...). Medians over rounds; ratios are per-round ratios to "
           f"Envoy, then the median.", ""]
    headline = result.get("headline")
    if headline:
        out += ["## Headline", "", headline, ""]
    for sc in result["scenarios"]:
        out += [f"## {sc['name']}: {sc['title']}", "",
                f"{sc['requests']} requests per closed-loop run, {sc['connections']} "
                f"connections, {sc['body_bytes']} B responses.", "",
                "| proxy | CPU µs/req (min–max) | ×Envoy | upstream CPU µs/req | req/s | ×Envoy "
                "| MB/s | CPU µs/req @rate | p50 µs | p90 µs | p99 µs | p99 ×Envoy | RSS MB "
                "| ×Envoy | noise |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sc["summary"]:
            if r.get("error"):
                out.append(f"| {r['proxy']} | failed: {r['error']} |" + " |" * 13)
                continue
            cpu = (f"{_fmt(r['cpu_us'])} ({_fmt(r['cpu_min'])}–{_fmt(r['cpu_max'])})"
                   if r["cpu_us"] is not None else "–")
            out.append(
                f"| {r['proxy']} | {cpu} | {_fmt(r['cpu_ratio'], 2)} | "
                f"{_fmt(r['upstream_cpu_us'])} | {_fmt(r['rps'], 0)} | "
                f"{_fmt(r['rps_ratio'], 2)} | "
                f"{_fmt(r['mbps'])} | {_fmt(r['cpu_us_at_rate'])} | {_fmt(r['p50'], 0)} | "
                f"{_fmt(r['p90'], 0)} | {_fmt(r['p99'], 0)} | {_fmt(r['p99_ratio'], 2)} | "
                f"{_fmt(r['rss_mb'])} | {_fmt(r['rss_ratio'], 2)} | {_fmt(r['noise'], 2)} |")
        for r in sc["runs"]:
            if r.get("phase") == "check":
                out += ["", f"**Check failed for {r['proxy']}: {r['error']}**"]
        if sc.get("notes"):
            out += [""] + sc["notes"]
        out.append("")
    out += ["Columns: CPU µs/req = (utime+stime of the proxy process tree after − before) / "
            "requests, at saturation (closed loop). upstream CPU = the same for the nginx "
            "upstream, to be excluded. CPU @rate = the same during the open-loop run (less "
            "batching per wake-up, so higher). RSS = resident set of the process tree after its "
            "last run. `no-proxy` = the load generators straight to the upstream: the floor "
            "of the measurement itself. noise = cores' worth of CPU used by anything else on the "
            "machine during the closed-loop run (median); runs above --max-noise are repeated.",
            ""]
    return "\n".join(out)


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scs = result["scenarios"]
    proxies = list(result["proxies"])
    rate = result["rate"]
    metrics = (("cpu_us", "CPU µs/request, saturated (min–max)", False),
               ("cpu_us_at_rate", f"CPU µs/request at {rate} req/s", False),
               ("rps", "requests/s, saturated", False),
               ("p50", f"p50 latency µs at {rate} req/s", False),
               ("p99", f"p99 latency µs at {rate} req/s (log)", True),
               ("rss_mb", "RSS MB after the runs", False))
    fig, axes = plt.subplots(2, 3, figsize=(16, 8))
    width = 0.8 / max(1, len(proxies))
    for ax, (key, title, log) in zip(axes.flat, metrics, strict=True):
        for i, p in enumerate(proxies):
            vals, lo, hi = [], [], []
            for sc in scs:
                row = next((r for r in sc["summary"] if r["proxy"] == p and not r.get("error")),
                           None)
                v = row.get(key) if row else None
                vals.append(v or 0)
                spread = key == "cpu_us" and v is not None
                lo.append(v - row["cpu_min"] if spread else 0)
                hi.append(row["cpu_max"] - v if spread else 0)
            xs = [j + i * width for j in range(len(scs))]
            ax.bar(xs, vals, width, label=p, yerr=[lo, hi] if key == "cpu_us" else None,
                   capsize=2)
        ax.set_xticks([j + width * (len(proxies) - 1) / 2 for j in range(len(scs))])
        ax.set_xticklabels([sc["name"] for sc in scs])
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"meshproxy vs Envoy 1.40 (and nginx, HAProxy) — {result['started']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
