"""Ray and Serve started in the benchmark's own process, as `make serve` runs them, on a free loopback port.

Import this module before ``ray.serve``: Serve reads its settings once, when it is imported, and a handle bound in
this process carries them to the replicas (throughput mode's gRPC between replicas, or Ray actor calls without it).
"""

from __future__ import annotations

import os
import socket

from serve_app.ray_env import apply_serve_env

apply_serve_env()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_serve(**ray_init) -> int:
    """A local Ray cluster (``ray_init``: more ``ray.init`` arguments) and Serve's HTTP on 127.0.0.1; returns the port.

    The Ray settings of ``serve_app.ray_env`` (HAProxy in front of the ingress, gRPC between replicas) apply unless the
    environment sets them already.
    """
    import ray
    from ray import serve
    from ray.serve._private import constants

    if constants.RAY_SERVE_THROUGHPUT_OPTIMIZED != (os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1"):
        raise RuntimeError("ray.serve was imported before its settings were applied: import benchmarks.local_serve first")
    ray.init(address="local", include_dashboard=False, log_to_driver=False, **ray_init)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


def run_app(app_args: dict, name: str = "stt", route_prefix: str = "/") -> None:
    """The project's app (``build_app`` with ``app_args``) deployed on the Serve that ``start_local_serve`` started."""
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app(app_args), name=name, route_prefix=route_prefix)


def stop_local_serve() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
