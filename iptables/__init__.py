"""meshproxy-iptables: the istio-init role (traffic capture rules for a sidecar).

A behavioural copy of Istio's istio-iptables (istio/istio tools/istio-iptables at 86c9f01):

    flags.py     the command line and its environment variables, parsed as pflag does
    config.py    flags + environment + host facts -> a validated, immutable Config (pure)
    capture.py   Config -> the rules, in Istio's order (pure)
    builder.py   rule lists -> iptables-restore text, cleanup/check commands, state parsing (pure)
    program.py   the apply/cleanup decision sequence as a generator of commands (sans-IO),
                 and the dry-run driver that prints Istio's golden format
    runner.py    picks iptables binaries and runs the commands (the only subprocess caller)
    routes.py    TPROXY policy routing and ::6 via pyroute2; local address listing
    validation.py  --run-validation
    cli.py       main()
"""
