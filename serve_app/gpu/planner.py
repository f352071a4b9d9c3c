"""GPU planner: reads a Serve config and prints each GPU's budget (fractions, bytes, what is left).

    python -m serve_app.gpu.planner serve_config.yaml [--gpus 1] [--gpu-memory-gib 80]

It counts every app and deployment that asks for GPUs: this project's models (from ``args``), Ray Serve LLM apps
(``llm_configs`` placement bundles) and any app's ``deployments`` overrides. Replicas are counted at their maximum
(``num_replicas`` or ``autoscaling_config.max_replicas``) and packed first-fit, as Ray packs fractional GPUs. Each
Voxtral model's byte plan (weights + activations + KV cache) must also fit its own share. Exit status 1 when any GPU
is over-committed or a model does not fit its share.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import yaml

from serve_app.config import AppConfig
from serve_app.gpu.budget import BudgetError, GiB, plan_memory

APP_BUILDER = "serve_app.app:build_app"
LLM_BUILDERS = ("ray.serve.llm:build_openai_app", "ray.serve.llm:build_llm_deployment")


@dataclass(frozen=True)
class GpuUser:
    name: str
    fraction: float
    replicas: int


@dataclass
class Gpu:
    index: int
    memory_bytes: int
    users: list[tuple[str, float]] = field(default_factory=list)

    @property
    def used(self) -> float:
        return sum(f for _, f in self.users)


def _max_replicas(options: dict) -> int:
    auto = options.get("autoscaling_config") or {}
    if auto:
        return int(auto.get("max_replicas", auto.get("min_replicas", 1)))
    n = options.get("num_replicas", 1)
    return 1 if n in (None, "auto") else int(n)


def gpu_users(serve_config: dict, device_bytes: int) -> tuple[list[GpuUser], list[str], list[str]]:
    """Every GPU-holding deployment of the config, the byte plans of Voxtral models, and the problems found."""
    users, plans, problems = [], [], []
    for app in serve_config.get("applications", []):
        app_name = app.get("name", "default")
        overrides = {d["name"]: d for d in app.get("deployments", []) if "name" in d}
        if app.get("import_path") == APP_BUILDER:
            config = AppConfig.model_validate(app.get("args") or {})
            for m in config.models:
                opts = {**m.deployment.serve_options(), **overrides.pop(f"model-{m.name}", {})}
                share = float((opts.get("ray_actor_options") or {}).get("num_gpus") or 0)
                if share:
                    users.append(GpuUser(f"{app_name}/{m.name}", share, _max_replicas(opts)))
                if m.backend == "voxtral" and share:
                    try:
                        plan = plan_memory(m.voxtral, m.voxtral.gpu_share or share, device_bytes)
                        plans.append(f"{app_name}/{m.name}: {plan.describe()}")
                    except BudgetError as e:
                        problems.append(str(e))
        elif app.get("import_path") in LLM_BUILDERS:
            for llm in (app.get("args") or {}).get("llm_configs", []):
                bundles = (llm.get("placement_group_config") or {}).get("bundles") or [{"GPU": 1}]
                share = sum(float(b.get("GPU", 0)) for b in bundles)
                name = llm.get("model_loading_config", {}).get("model_id", "llm")
                users.append(GpuUser(f"{app_name}/{name}", share, _max_replicas(llm.get("deployment_config") or {})))
        for name, opts in overrides.items():
            share = float((opts.get("ray_actor_options") or {}).get("num_gpus") or 0)
            if share:
                users.append(GpuUser(f"{app_name}/{name}", share, _max_replicas(opts)))
    return users, plans, problems


def pack(users: list[GpuUser], gpus: int, memory_bytes: int) -> tuple[list[Gpu], list[str]]:
    """First-fit decreasing, one replica at a time; a replica that fits nowhere is reported (it would stay pending)."""
    cards = [Gpu(i, memory_bytes) for i in range(gpus)]
    pending = []
    replicas = [(u.name, u.fraction) for u in users for _ in range(u.replicas)]
    for name, fraction in sorted(replicas, key=lambda r: -r[1]):
        card = next((c for c in cards if c.used + fraction <= 1.0 + 1e-9), None)
        if card is None:
            pending.append(f"{name} ({fraction:g} GPU) does not fit on any of the {gpus} GPU(s)")
        else:
            card.users.append((name, fraction))
    return cards, pending


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a Serve config YAML (serve_config.yaml)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs in the cluster")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory of each GPU")
    args = parser.parse_args(argv)
    with open(args.config) as f:
        serve_config = yaml.safe_load(f)
    memory = int(args.gpu_memory_gib * GiB)
    print(f"{args.config}: {args.gpus} GPU(s) of {args.gpu_memory_gib:g} GiB")
    users, plans, problems = gpu_users(serve_config, memory)
    for plan in plans:
        print(f"memory plan {plan}")
    cards, pending = pack(users, args.gpus, memory)
    for card in cards:
        print(f"GPU {card.index}: {card.used:.2f} of 1.00 used, {(1 - card.used) * memory / GiB:.2f} GiB left")
        for name, fraction in card.users:
            print(f"  {fraction:5.2f}  {fraction * memory / GiB:6.2f} GiB  {name}")
    for problem in problems + pending:
        print(f"OVER-COMMITTED: {problem}")
    return 1 if problems or pending else 0


if __name__ == "__main__":
    sys.exit(main())
