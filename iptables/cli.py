"""Placeholder entry point; the tool is being built (issue 3)."""

import sys


def main(argv=None) -> int:
    print("meshproxy-iptables: not implemented yet", file=sys.stderr)
    return 2
