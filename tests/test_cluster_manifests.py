"""cluster/: the RayService is generated from serve_config.yaml (and fails here if they drift); the RayJob and the
cluster-launcher YAML are valid and agree with the project's config and Ray version."""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

from serve_app.batch.job import parse_args
from serve_app.config import load_serve_config

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


def _generator():
    spec = importlib.util.spec_from_file_location("cluster_generate", CLUSTER / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rayservice_is_generated_from_serve_config():
    generate = _generator()
    committed = (CLUSTER / "rayservice.yaml").read_text()
    fresh = generate.render((REPO / "serve_config.yaml").read_text(), (CLUSTER / "rayservice.template.yaml").read_text())
    assert committed == fresh, "cluster/rayservice.yaml is stale: run python cluster/generate.py"
    assert generate.main(["--check"]) == 0

    service = yaml.safe_load(committed)
    serve_config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    in_cluster = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert in_cluster["applications"] == serve_config["applications"]
    assert in_cluster["http_options"]["host"] == "0.0.0.0"
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


def test_generator_notices_a_changed_serve_config():
    generate = _generator()
    serve_config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    serve_config["applications"][0]["args"]["models"][0]["deployment"]["num_replicas"] = 7
    changed = generate.render(yaml.safe_dump(serve_config), (CLUSTER / "rayservice.template.yaml").read_text())
    assert changed != (CLUSTER / "rayservice.yaml").read_text()
    assert "num_replicas: 7" in changed


def test_rayjob_runs_the_batch_cli_with_a_model_from_serve_config():
    job = yaml.safe_load((CLUSTER / "rayjob-batch.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "serve_app.batch"]
    args = parse_args(argv[3:])
    # The image has the repo at /home/ray/stt (cluster/Dockerfile); check the same file here.
    config_path = REPO / Path(args.config).relative_to("/home/ray/stt")
    load_serve_config(str(config_path), args.app).model(args.model)  # raises if the model is not configured
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert any("nvidia.com/gpu" in c["resources"]["limits"] for w in workers for c in w["template"]["spec"]["containers"])


def test_cluster_launcher_config_is_valid():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "cluster-launcher.yaml").read_text())
    validate_config(prepare_config(config))  # Ray's own schema, after its defaults are filled in
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["node_config"]["InstanceType"].startswith("m6i")
    gpu = nodes["a100-80gb"]
    assert gpu["node_config"]["InstanceType"] == "p4de.24xlarge" and gpu["min_workers"] == 0 and gpu["max_workers"] > 0
    assert any("--num-cpus=0" in c for c in config["head_start_ray_commands"])


def test_dockerfile_uses_the_installed_ray_version():
    assert f"rayproject/ray:{ray.__version__}-" in (CLUSTER / "Dockerfile").read_text()


def test_every_place_that_starts_ray_sets_the_serve_env():
    from serve_app.ray_env import SERVE_ENV

    dockerfile = (CLUSTER / "Dockerfile").read_text()  # the RayService, the RayJob and the cluster launcher
    makefile = (REPO / "Makefile").read_text()  # make serve / make test
    printed = subprocess.run([sys.executable, "-m", "serve_app.ray_env"], cwd=REPO, capture_output=True, text=True).stdout
    for key, value in SERVE_ENV.items():
        assert f"{key}={value}" in dockerfile
        assert f"export {key} ?= {value}" in makefile
        assert f"{key}={value}" in printed.split()  # README: env $(python -m serve_app.ray_env) serve run ...
