"""--run-validation: prove that the rules redirect, as Istio's istio-validation container does.

istio/istio tools/istio-iptables/pkg/validation/validator.go at 86c9f01: listen on the proxy's
outbound and inbound capture ports on loopback, repeatedly connect to 127.0.0.6 (::6) at the
probe port (15002, where nothing listens); if the rules work the connection lands on one of our
listeners and SO_ORIGINAL_DST says it was for the probe port.  Run as the proxy uid (the CNI
validation container does), since the rules only send the proxy's loopback traffic to 15006.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time

from .config import Config

log = logging.getLogger("meshproxy-iptables")

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value


class ValidationFailed(RuntimeError):
    pass


def original_port(conn: socket.socket, ipv6: bool) -> int:
    level = socket.IPPROTO_IPV6 if ipv6 else socket.IPPROTO_IP
    raw = conn.getsockopt(level, SO_ORIGINAL_DST, 28 if ipv6 else 16)
    return struct.unpack_from("!H", raw, 2)[0]  # sockaddr_in(6).sin_port, network order


def run(cfg: Config) -> None:
    ipv6 = ":" in cfg.host_ip
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    listen_ip, server_ip = ("::1", "::6") if ipv6 else ("127.0.0.1", "127.0.0.6")
    listeners = []
    for port in (cfg.proxy_port, cfg.inbound_capture_port):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((listen_ip, int(port)))
            s.listen(16)
            listeners.append(s)
            log.info("Listening on %s:%s", listen_ip, port)
        except (OSError, ValueError) as e:
            log.error("Error on listening: %s", e)
            s.close()
    if not listeners:
        raise ValidationFailed(f"no listener available: {listen_ip}:{cfg.proxy_port},"
                               f"{listen_ip}:{cfg.inbound_capture_port}")
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                with socket.socket(family, socket.SOCK_STREAM) as c:
                    c.settimeout(1.0)
                    c.bind((listen_ip, 0))
                    c.connect((server_ip, cfg.iptables_probe_port))
                    c.recv(16)
            except OSError:
                pass
            stop.wait(1.0)  # don't spam: each attempt leaves a TIME_WAIT socket

    threading.Thread(target=client, daemon=True).start()
    deadline = time.monotonic() + cfg.probe_timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(listeners, [], [], left)
            for s in ready:
                conn, _ = s.accept()
                with conn:
                    try:
                        port = original_port(conn, ipv6)
                    except OSError as e:
                        log.error("Error getting original dst: %s", e)
                        continue
                    conn.sendall(str(port).encode())
                if port == cfg.iptables_probe_port:
                    log.info("Validation passed, iptables rules established")
                    return
        raise ValidationFailed("validation timeout")
    finally:
        stop.set()
        for s in listeners:
            s.close()
