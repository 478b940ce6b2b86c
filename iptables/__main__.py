"""``python -m meshproxy_iptables`` runs the command line (tests use this inside namespaces)."""

import sys

from .cli import main

sys.exit(main())
