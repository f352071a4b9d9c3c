"""Ray and Serve started in the benchmark's own process, as `make serve` runs them, on a free loopback port."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_serve(**ray_init) -> int:
    """A local Ray cluster (``ray_init``: more ``ray.init`` arguments) and Serve's HTTP on 127.0.0.1; returns the port.

    The Ray settings of ``serve_app.ray_env`` (HAProxy in front of the ingress) are applied first, unless the
    environment sets them already.
    """
    import ray
    from ray import serve

    from serve_app.ray_env import apply_serve_env

    apply_serve_env()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, **ray_init)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port
