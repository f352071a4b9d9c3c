"""The Ray settings this app is tested and measured with. They must be in the environment of the process that starts
Ray (``serve run`` for a local cluster, ``ray start`` on each node): the Makefile, cluster/ and the tests set them.

HAProxy with direct ingress: Ray Serve's bundled HAProxy takes the HTTP connections on the Serve port and hands them
to the ingress replicas, which serve HTTP themselves, instead of Serve's Python proxy actor relaying each request to a
replica over gRPC. On the 2-core CPU box that removed the proxy's CPU from every request: at 4 concurrent clients
the HTTP path went from 16.9 to 18.9 audio-s/s (benchmarks/results/whisper_http_cpu.json).

Throughput-optimized mode (Ray's documented pair to HAProxy): handle calls between replicas over direct gRPC, user
code and the handle's router on the replica's own event loop, the GC frozen after start-up. What one request's trip
through HAProxy, the ingress and a handle call costs fell from 7.8-8.1 to 3.4-4.0 ms at p50 on the 2-core CPU box
(benchmarks/results/serve_overhead_cpu.json); keeping the router in its own thread gave
back 1-1.6 ms of that, so a handle must be called from async code (a script that wants ``handle.remote().result()``
sets ``RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=1``). Beside the mode:
- a replica takes gRPC messages up to 1 GiB, not 4 MiB: a request's whole audio crosses to the model replica when it
  is not cut into chunks (chat, ``chunking.enabled: false``), and 1 GiB holds 9.3 hours of 16 kHz 16-bit PCM (the form
  audio crosses in, ``model_server.to_pcm16``);
- replica logs stay on stderr and the per-request log lines unbuffered, so ``serve run`` and ``kubectl logs`` show
  every request at once.
"""

from __future__ import annotations

import os

SERVE_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_LOG_TO_STDERR": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(1 << 30),
}


def apply_serve_env() -> None:
    """Set the defaults for a Ray started by this process (tests, benchmarks); explicit settings win."""
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)


if __name__ == "__main__":  # env $(python -m serve_app.ray_env) serve run serve_config.yaml
    print(" ".join(f"{key}={value}" for key, value in SERVE_ENV.items()))
