"""The Ray settings this app is tested and measured with. They must be in the environment of the process that starts
Ray (``serve run`` for a local cluster, ``ray start`` on each node): the Makefile, cluster/ and the tests set them.

HAProxy with direct ingress: Ray Serve's bundled HAProxy takes the HTTP connections on the Serve port and hands them
to the ingress replicas, which serve HTTP themselves, instead of Serve's Python proxy actor relaying each request to a
replica over gRPC. On the 2-core CPU box that removed the proxy's CPU from every request: at 4 concurrent clients
the HTTP path went from 16.9 to 18.9 audio-s/s (benchmarks/results/whisper_http_cpu.json).
"""

from __future__ import annotations

import os

SERVE_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}


def apply_serve_env() -> None:
    """Set the defaults for a Ray started by this process (tests, benchmarks); explicit settings win."""
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)
