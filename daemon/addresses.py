"""Network addresses as the configuration writes them (``host:port``): a leaf, imported by the
config, the metrics endpoint and the HTTP API alike."""

from __future__ import annotations


def split_host_port(address: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"``, ``"[::1]:9464"``, ``"localhost:0"`` -> (host, port). Raises ValueError."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected host:port (e.g. \"127.0.0.1:9464\"), got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, e.g. \"[::1]:9464\", got {address!r}")
    port = int(port_text)
    if not host or port > 65535:
        raise ValueError(f"expected host:port with a port from 0 to 65535, got {address!r}")
    return host, port
