"""cluster/: the manifests are generated (and fail here if they drift), pass KubeRay's, Kubernetes' and Ray's schemas,
and would come up on a fresh cluster of the node types they name: requests that fit, a model cache the image's user
can write, GPU counts equal to the planner's packing, a pinned image from a registry; a config that cannot be placed
is refused with the reason."""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml
from referencing import Registry, Resource

from serve_app.batch.job import parse_args
from serve_app.config import load_serve_config
from serve_app.gpu import planner
from serve_app.gpu.budget import GiB

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY_SCHEMA = REPO / "tests" / "schemas" / "kuberay-v1.3-ray.io-v1.yaml"
K8S_VERSION = "1.33.0"


def _generator():
    spec = importlib.util.spec_from_file_location("cluster_generate", CLUSTER / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _generator()


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _settings():
    return generate.Settings.model_validate(_load("settings.yaml"))


def _templates() -> dict[str, str]:
    return {name: (CLUSTER / template).read_text() for name, template in generate.OUTPUTS.items()}


def _render(serve_config: dict | None = None, templates: dict[str, str] | None = None) -> dict[str, str]:
    text = yaml.safe_dump(serve_config) if serve_config else (REPO / "serve_config.yaml").read_text()
    return generate.render_all(text, (CLUSTER / "settings.yaml").read_text(), templates or _templates())


def _pods() -> list[tuple[str, dict]]:
    return generate.pod_templates(_load("rayservice.yaml")) + generate.pod_templates(_load("rayjob-batch.yaml"))


def _group(manifest: dict, name: str) -> dict:
    spec = manifest["spec"].get("rayClusterConfig") or manifest["spec"]["rayClusterSpec"]
    return next(w for w in spec["workerGroupSpecs"] if w["groupName"] == name)


# -- generated, and from what -------------------------------------------------------------------------------------


def test_every_manifest_is_generated_and_up_to_date():
    fresh = _render()
    assert set(fresh) == {"rayservice.yaml", "rayjob-batch.yaml", "cluster-launcher.yaml", "serviceaccount.yaml"}
    for name, text in fresh.items():
        assert (CLUSTER / name).read_text() == text, f"cluster/{name} is stale: run python cluster/generate.py"
        assert "{{" not in text
    assert generate.main(["--check"]) == 0

    service = _load("rayservice.yaml")
    serve_config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    in_cluster = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert in_cluster["applications"] == serve_config["applications"]
    assert in_cluster["http_options"]["host"] == "0.0.0.0"
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


def test_generator_notices_a_changed_serve_config():
    serve_config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    serve_config["applications"][0]["args"]["models"][0]["deployment"]["num_replicas"] = 1
    changed = _render(serve_config)["rayservice.yaml"]
    assert changed != (CLUSTER / "rayservice.yaml").read_text()
    assert "num_replicas: 1" in changed


# -- schemas: KubeRay's, Kubernetes', Ray's ---------------------------------------------------------------------------


def _kuberay_validator(kind: str) -> jsonschema.Validator:
    k8s = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{K8S_VERSION}-local-strict/_definitions.json", K8S_VERSION
    )
    kuberay = yaml.safe_load(KUBERAY_SCHEMA.read_text())
    registry = Registry().with_resources(
        [(k8s["$id"], Resource.from_contents(k8s)), (kuberay["$id"], Resource.from_contents(kuberay))]
    )
    return jsonschema.Draft202012Validator({"$ref": f"{kuberay['$id']}#/$defs/{kind}"}, registry=registry)


@pytest.mark.parametrize("name, kind", [("rayservice.yaml", "RayService"), ("rayjob-batch.yaml", "RayJob")])
def test_custom_resources_pass_the_kuberay_schema(name, kind):
    manifest = _load(name)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind
    validator = _kuberay_validator(kind)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]
    assert not errors, "\n".join(errors)

    # The schema is live: a misspelt KubeRay field and a misspelt Kubernetes field inside a pod template both fail.
    broken = copy.deepcopy(manifest)
    cluster = broken["spec"].get("rayClusterConfig") or broken["spec"]["rayClusterSpec"]
    cluster["workerGroupSpecs"][0]["maxReplica"] = 3
    cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resource"] = {"limits": {"cpu": "1"}}
    messages = " ".join(e.message for e in validator.iter_errors(broken))
    assert "'maxReplica' was unexpected" in messages and "'resource' was unexpected" in messages


def test_serviceaccount_passes_the_kubernetes_schema_and_carries_the_batch_role():
    account = _load("serviceaccount.yaml")
    kubernetes_validate.validate(account, K8S_VERSION, strict=True)
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == _settings().aws.batch_role_arn
    # the batch job's head (writes the output) and workers (read the audio) run as it; the service's pods need no S3
    job_pods = generate.pod_templates(_load("rayjob-batch.yaml"))
    assert {p["spec"].get("serviceAccountName") for _, p in job_pods} == {account["metadata"]["name"]}


def test_serve_config_v2_passes_serves_schema():
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load(_load("rayservice.yaml")["spec"]["serveConfigV2"]))


def test_cluster_launcher_passes_rays_schema_and_its_head_holds_no_cpus():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load("cluster-launcher.yaml")
    validate_config(prepare_config(copy.deepcopy(config)))  # Ray's own ray-schema.json, after its defaults
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    start = " ".join(config["head_start_ray_commands"])
    num_cpus = re.search(r"--num-cpus=(\d+)", start).group(1)
    assert head["resources"] == {"CPU": int(num_cpus)} == {"CPU": 0}  # the autoscaler plans nothing for the head
    settings = _settings()
    gpu = nodes["gpu"]
    assert gpu["node_config"]["InstanceType"] == settings.gpu_node_type
    assert gpu["resources"] == {"CPU": 16, "GPU": settings.gpu_node().gpus}
    # every node can reach the object store and the registry: an instance profile, and a registry login
    assert {n["node_config"]["IamInstanceProfile"]["Arn"] for n in nodes.values()} == {settings.aws.instance_profile_arn}
    assert any(f"docker login --username AWS --password-stdin {settings.image.registry}" in c for c in config["initialization_commands"])


# -- would come up on the named node types --------------------------------------------------------------------------


def test_requests_fit_the_named_node_types():
    settings = _settings()
    for where, pod in _pods():
        node = settings.node_types[pod["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"]]
        want = generate.pod_requests(pod)
        assert want["cpu"] <= node.cpu - settings.daemonset_room.cpu, where
        assert want["memory"] <= node.memory_gib - settings.daemonset_room.memory_gib, where
        assert want.get("nvidia.com/gpu", 0) <= node.gpus, where
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert {k: generate.quantity(v) for k, v in limits.items()} == {k: v for k, v in want.items()}, where
    head = generate.pod_templates(_load("rayservice.yaml"))[0][1]
    assert generate.pod_requests(head) == {"cpu": 6, "memory": 24}  # m6i.2xlarge: 8 vCPU / 32 GiB before the kubelet


def test_a_request_larger_than_its_node_type_is_refused():
    templates = _templates()
    templates["rayservice.yaml"] = templates["rayservice.yaml"].replace(
        'requests: {cpu: "6", memory: 24Gi}', 'requests: {cpu: "8", memory: 32Gi}'
    )
    with pytest.raises(generate.PlacementError) as e:
        _render(templates=templates)
    assert "stt/head: requests cpu 8, more than a m6i.2xlarge offers pods (7.41)" in str(e.value)
    assert "stt/head: requests memory 32, more than a m6i.2xlarge offers pods (28.5)" in str(e.value)


def test_the_model_cache_is_writable_by_the_images_user():
    settings = _settings()
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert dockerfile.rstrip().endswith("USER ray")  # uid 1000, group users (100) in rayproject/ray images
    assert (settings.image.uid, settings.image.gid) == (1000, 100)
    cache_pods = 0
    for where, pod in _pods():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsUser"] == settings.image.uid, where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            hf_home = next((e["value"] for e in container.get("env", []) if e["name"] == "HF_HOME"), None)
            if hf_home is None:
                continue
            mount = next(m for m in container["volumeMounts"] if hf_home.startswith(m["mountPath"]))
            volume = volumes[mount["name"]]
            if "hostPath" in volume:  # created root 0755 by the kubelet: an init container must hand it over
                init = next(c for c in spec["initContainers"] if any(m["name"] == mount["name"] for m in c["volumeMounts"]))
                assert init["securityContext"]["runAsUser"] == 0
                assert f"chown -R {settings.image.uid}:{settings.image.gid} {mount['mountPath']}" in " ".join(init["command"])
            cache_pods += 1
    assert cache_pods == 2  # the service's and the batch job's GPU workers


def test_a_hostpath_cache_without_its_owner_is_refused():
    templates = _templates()
    service = yaml.safe_load(templates["rayservice.yaml"].replace("{{", "<").replace("}}", ">"))
    assert _group(service, "gpu")["template"]["spec"]["initContainers"]  # what the mutation below removes
    start = templates["rayservice.yaml"].index("            initContainers:")
    end = templates["rayservice.yaml"].index("            containers:", start)
    templates["rayservice.yaml"] = templates["rayservice.yaml"][:start] + templates["rayservice.yaml"][end:]
    with pytest.raises(generate.PlacementError, match="stt/gpu: hostPath volume 'models' is owned by root"):
        _render(templates=templates)


def _service_users() -> list[planner.GpuUser]:
    memory = int(_settings().gpu_node().gpu_memory_gib * GiB)
    return planner.gpu_users(yaml.safe_load((REPO / "serve_config.yaml").read_text()), memory).users


def test_gpu_counts_equal_the_planners_packing():
    memory = int(_settings().gpu_node().gpu_memory_gib * GiB)
    users = _service_users()
    assert sum(u.fraction * u.replicas for u in users) == pytest.approx(0.15 * 2 + 0.1 + 0.5)
    gpu = _group(_load("rayservice.yaml"), "gpu")
    per_pod = int(gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert per_pod == 1
    assert gpu["maxReplicas"] * per_pod == planner.cards_needed(users, memory) == 1
    assert gpu["minReplicas"] == gpu["replicas"] == planner.cards_needed(users, memory, at_least=True) == 1

    # the batch job: --max-actors at the model's share (0.15: six a card)
    job = _load("rayjob-batch.yaml")
    args = parse_args(shlex.split(job["spec"]["entrypoint"])[3:])
    model = load_serve_config(str(REPO / "serve_config.yaml"), args.app).model(args.model)
    share = model.deployment.ray_actor_options["num_gpus"]
    batch_cards = planner.cards_needed([planner.GpuUser("batch", share, args.max_actors)], memory)
    assert _group(job, "gpu")["maxReplicas"] == batch_cards == 4
    launcher = _load("cluster-launcher.yaml")
    assert launcher["available_node_types"]["gpu"]["max_workers"] == gpu["maxReplicas"] + batch_cards


def test_more_replicas_mean_more_gpu_pods():
    serve_config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    serve_config["applications"][0]["args"]["models"][0]["deployment"]["autoscaling_config"]["max_replicas"] = 6
    service = yaml.safe_load(_render(serve_config)["rayservice.yaml"])
    assert _group(service, "gpu")["maxReplicas"] == 2  # 0.5 + 0.1 + 6 x 0.15 = 1.5 cards -> 2 pods
    assert _group(service, "gpu")["minReplicas"] == 1


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"placement_group_config": {"bundles": [{"GPU": 1.5, "CPU": 2}]}}, "a replica needs more than one card"),
        ({"engine_kwargs": {"gpu_memory_utilization": 0.5, "max_model_len": 8192}}, "No available memory for the cache blocks"),
    ],
)
def test_a_config_that_cannot_be_placed_is_refused_with_the_reason(change, reason):
    serve_config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    llm = next(a for a in serve_config["applications"] if a["name"] == "llm")["args"]["llm_configs"][0]
    llm.update(change)
    with pytest.raises(generate.PlacementError, match=re.escape(reason)):
        _render(serve_config)


def test_the_cli_refuses_with_the_reason(tmp_path, monkeypatch, capsys):
    bad = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    bad["applications"][0]["args"]["models"][0]["deployment"]["ray_actor_options"]["num_gpus"] = 0.05
    (tmp_path / "serve_config.yaml").write_text(yaml.safe_dump(bad))
    monkeypatch.setattr(generate, "SERVE_CONFIG", tmp_path / "serve_config.yaml")
    assert generate.main(["--check"]) == 2
    err = capsys.readouterr().err
    assert "refused: serve_config.yaml does not fit its GPUs" in err and "does not fit its GPU share" in err


# -- the image ------------------------------------------------------------------------------------------------------


def test_no_unpinned_image_and_no_forced_pulls():
    settings = _settings()
    ref = settings.image.ref()
    assert re.fullmatch(r"[a-z0-9.-]+\.[a-z]+(:\d+)?/[a-z0-9._/-]+:[\w.-]+", ref), ref  # a registry host, a tag
    assert not ref.endswith(":latest")
    images = []
    for _, pod in _pods():
        for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            images.append(c["image"])
            assert c["imagePullPolicy"] == "IfNotPresent"
    launcher = _load("cluster-launcher.yaml")
    images.append(launcher["docker"]["image"])
    assert set(images) == {ref} and len(images) == 8  # 7 containers in pods, the launcher's
    assert launcher["docker"]["pull_before_run"] is False
    for name in generate.OUTPUTS:
        assert ":latest" not in (CLUSTER / name).read_text()
    for bad in ("latest", ""):
        with pytest.raises(ValueError, match="pin the image tag"):
            generate.Image(**{**settings.image.model_dump(), "tag": bad})
    with pytest.raises(ValueError, match="Docker Hub"):
        generate.Image(**{**settings.image.model_dump(), "registry": "stt"})


def test_the_image_pins_the_measured_vllm_on_a_cuda_12_base():
    import tomllib

    dockerfile = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    assert base == f"rayproject/ray:{ray.__version__}-py311-cu128"  # CUDA 12 for CTranslate2
    assert "-c cluster/constraints-gpu.txt" in dockerfile
    pins = dict(line.split("==") for line in (CLUSTER / "constraints-gpu.txt").read_text().splitlines() if "==" in line)
    assert pins["vllm"] == "0.26.0" and pins["ray"] == ray.__version__
    assert "vllm 0.26.0" in (REPO / "benchmarks" / "NOTES-gpu.md").read_text().lower()  # what was measured
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["gpu"] == ["vllm[audio]==0.26.0"]


def test_dockerignore_keeps_the_build_context_small_and_complete():
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert {".git", ".venv", "benchmarks", "tests"} <= set(ignored)
    copied = re.findall(r"^COPY --chown=\S+ (.+) \S+$", (CLUSTER / "Dockerfile").read_text(), re.M)
    for source in " ".join(copied).split():
        assert (REPO / source).exists(), source
        assert not any(source == i or source.startswith(i.rstrip("/") + "/") for i in ignored), source


def test_rayjob_runs_the_batch_cli_with_a_model_from_serve_config():
    job = _load("rayjob-batch.yaml")
    assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "serve_app.batch"]
    args = parse_args(argv[3:])
    # The image has the repo at /home/ray/stt (cluster/Dockerfile); check the same file here.
    config_path = REPO / Path(args.config).relative_to("/home/ray/stt")
    load_serve_config(str(config_path), args.app).model(args.model)  # raises if the model is not configured


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
