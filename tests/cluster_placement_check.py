"""Replica placement across nodes, on CPU: a Ray cluster of one CPU head and two nodes with one logical GPU each.

Run by tests/test_cluster_placement.py in a subprocess (it needs its own multi-node cluster, and the test session
already has one): `python tests/cluster_placement_check.py REPORT.json` writes what it observed; the test asserts.

  1. 12 replicas at num_gpus 0.15 (the Voxtral default) pack 6 to a GPU (0.9 of it); a light CPU deployment
     beside them runs too, and nothing GPU-bound lands on the head.
  2. A replica needing num_gpus 0.5 does not fit (0.1 is left per GPU): it stays pending and serve.status() says
     why; the running application is untouched.
  3. Deleting the packed application frees the GPUs and the pending replica starts: it was waiting, not failed.
"""

from __future__ import annotations

import json
import os
import sys
import time

# Read by the Serve controller: report a replica that cannot be scheduled after 2 s instead of 30 s.
os.environ["RAY_SERVE_SLOW_STARTUP_WARNING_S"] = "2"
os.environ["RAY_SERVE_SLOW_STARTUP_WARNING_PERIOD_S"] = "2"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# This script calls a handle from sync code; the app's throughput mode routes on the caller's loop
# (serve_app/ray_env.py), so the router gets its own thread here.
os.environ["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] = "1"

import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.serve.schema import ApplicationStatus  # noqa: E402

PACKED_REPLICAS = 12
GPU_SHARE = 0.15


@ray.remote(num_cpus=0)
class Placements:
    """Where each replica started: replicas report here from their constructors."""

    def __init__(self):
        self.seen = {}

    def record(self, replica: str, node_id: str, gpu_ids: list) -> None:
        self.seen[replica] = {"node_id": node_id, "gpu_ids": [str(g) for g in gpu_ids]}

    def get(self) -> dict:
        return self.seen


def _report(kind: str) -> None:
    ctx = serve.get_replica_context()
    placements = ray.get_actor("placements", namespace="placement-check")
    ray.get(placements.record.remote(f"{kind}:{ctx.replica_tag}", ray.get_runtime_context().get_node_id(), ray.get_gpu_ids()))


@serve.deployment(num_replicas=PACKED_REPLICAS, ray_actor_options={"num_cpus": 0, "num_gpus": GPU_SHARE})
class GpuShare:
    """Stands in for a model replica with a fractional GPU (no model is loaded)."""

    def __init__(self):
        _report("gpu")

    def __call__(self) -> str:
        return ray.get_runtime_context().get_node_id()


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.1})
class Light:
    def __init__(self):
        _report("light")

    def __call__(self) -> str:
        return "ok"


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0, "num_gpus": 0.5})
class TooBig:
    def __init__(self):
        _report("big")

    def __call__(self) -> str:
        return "ok"


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class Ingress:
    def __init__(self, gpu, light):
        self.gpu, self.light = gpu, light

    async def __call__(self) -> list[str]:
        return [await self.gpu.remote(), await self.light.remote()]


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}: {serve.status()}")


def main(report_path: str) -> None:
    started = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False})
    gpu_nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    try:
        ray.init(address=cluster.address, namespace="placement-check", log_to_driver=False)
        cluster.wait_for_nodes()
        head_id = ray.get_runtime_context().get_node_id()
        gpu_node_ids = sorted(n.node_id for n in gpu_nodes)
        placements = Placements.options(name="placements").remote()
        serve.start(proxy_location="Disabled")

        handle = serve.run(Ingress.bind(GpuShare.bind(), Light.bind()), name="packed", route_prefix=None)
        answer = handle.remote().result(timeout_s=60)
        packed_free_gpu = ray.available_resources().get("GPU", 0.0)

        serve.run_many(
            [serve.RunTarget(TooBig.bind(), name="overflow", route_prefix=None)],
            wait_for_applications_running=False,
        )

        def overflow_reported():
            app = serve.status().applications.get("overflow")
            dep = app and app.deployments.get("TooBig")
            return dep if dep and "to be scheduled" in dep.message else None

        pending = wait_for(overflow_reported, 30, "the pending replica to be reported")
        status = serve.status()
        overflow_app_status = str(status.applications["overflow"].status)
        packed_app_status = str(status.applications["packed"].status)

        serve.delete("packed")
        wait_for(
            lambda: serve.status().applications["overflow"].status == ApplicationStatus.RUNNING,
            45,
            "the pending replica to start once GPUs were freed",
        )
        seen = ray.get(placements.get.remote())
        with open(report_path, "w") as f:
            json.dump(
                {
                    "head_node_id": head_id,
                    "gpu_node_ids": gpu_node_ids,
                    "gpu_share": GPU_SHARE,
                    "placements": seen,
                    "answer": answer,
                    "free_gpu_when_packed": packed_free_gpu,
                    "pending_status": str(pending.status),
                    "pending_message": pending.message,
                    "overflow_app_status_while_pending": overflow_app_status,
                    "packed_app_status_while_pending": packed_app_status,
                    "overflow_app_status_after_delete": str(serve.status().applications["overflow"].status),
                    "elapsed_s": round(time.monotonic() - started, 1),
                },
                f,
                indent=2,
            )
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
