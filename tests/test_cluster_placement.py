"""Fractional-GPU placement across nodes, checked on CPU with logical GPUs (tests/cluster_placement_check.py).

The check builds its own three-node Ray cluster, so it runs in a subprocess beside the session's cluster.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_fractional_replicas_pack_and_a_replica_that_does_not_fit_stays_pending(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "cluster_placement_check.py"), str(tmp_path / "report.json")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())

    gpu_replicas = [p for name, p in report["placements"].items() if name.startswith("gpu:")]
    per_node = collections.Counter(p["node_id"] for p in gpu_replicas)
    # 12 replicas at 0.15 GPU: 6 on each one-GPU node (0.9 of it), none on the GPU-less head.
    assert len(gpu_replicas) == 12
    assert sorted(per_node) == report["gpu_node_ids"] and set(per_node.values()) == {6}
    assert all(p["gpu_ids"] == ["0"] for p in gpu_replicas)
    assert abs(report["free_gpu_when_packed"] - 0.2) < 1e-6
    # The light CPU deployment runs beside them and the app answers through both.
    assert sum(name.startswith("light:") for name in report["placements"]) == 2
    assert report["answer"][0] in report["gpu_node_ids"] and report["answer"][1] == "ok"

    # A 0.5-GPU replica does not fit: pending, with a status that says why; the running app is unaffected.
    assert report["pending_status"] == "DeploymentStatus.UPDATING"
    assert "to be scheduled" in report["pending_message"]
    assert '{"GPU": 0.5}' in report["pending_message"] and '"GPU": 0.2' in report["pending_message"]
    assert report["overflow_app_status_while_pending"] == "ApplicationStatus.DEPLOYING"
    assert report["packed_app_status_while_pending"] == "ApplicationStatus.RUNNING"
    # Freeing the GPUs lets it start: it was waiting for resources, not failed.
    assert report["overflow_app_status_after_delete"] == "ApplicationStatus.RUNNING"
    big = [p for name, p in report["placements"].items() if name.startswith("big:")]
    assert len(big) == 1 and big[0]["node_id"] in report["gpu_node_ids"]
