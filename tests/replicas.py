"""Looking at an app's replicas from a test: which replica actors exist, whether all are running, and killing one."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Callable

import ray
from ray import serve

SERVE_NAMESPACE = "serve"
_handle_loop: asyncio.AbstractEventLoop | None = None


def on_handle_loop(coro, timeout_s: float):
    """Runs a coroutine that calls Serve handles (``.remote()`` inside it) and returns its result.

    The app's throughput mode routes a handle's calls on the loop of its first call (serve_app/ray_env.py), so the
    tests' calls share one loop that lives as long as the process: Serve's shutdown still finds it running.
    """
    global _handle_loop
    if _handle_loop is None:
        _handle_loop = asyncio.new_event_loop()
        threading.Thread(target=_handle_loop.run_forever, name="handle-loop", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coro, _handle_loop).result(timeout_s)


def replica_actor_names(app: str) -> dict[str, set[str]]:
    """Deployment name -> names of its live replica actors (``SERVE_REPLICA::<app>#<deployment>#<replica id>``)."""
    names: dict[str, set[str]] = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name = actor["name"]
        if actor["namespace"] == SERVE_NAMESPACE and name.startswith(f"SERVE_REPLICA::{app}#"):
            deployment = name.split("#")[1]
            names.setdefault(deployment, set()).add(name)
    return names


def running_replicas(app: str) -> dict[str, dict[str, int]]:
    """Deployment name -> replica states and counts, as ``serve.status()`` reports them."""
    return {name: dict(d.replica_states) for name, d in serve.status().applications[app].deployments.items()}


def all_running(app: str) -> bool:
    status = serve.status().applications.get(app)
    return (
        status is not None
        and status.status == "RUNNING"
        and all(set(d.replica_states) == {"RUNNING"} for d in status.deployments.values())
    )


def kill_replica(actor_name: str) -> None:
    """Kill a replica as a crash would: no restart by Ray, so Serve's controller has to notice and replace it."""
    ray.kill(ray.get_actor(actor_name, namespace=SERVE_NAMESPACE), no_restart=True)


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
