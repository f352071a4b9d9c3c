"""GPU planner: reads a Serve config and prints each GPU's budget (fractions, bytes, what is left).

    python -m serve_app.gpu.planner serve_config.yaml [--gpus 1] [--gpu-memory-gib 80]

It counts every app and deployment that asks for GPUs: this project's models (from ``args``), Ray Serve LLM apps
(``llm_configs`` placement bundles) and any app's ``deployments`` overrides. Replicas are counted at their maximum
(``num_replicas`` or ``autoscaling_config.max_replicas``) and packed first-fit, as Ray packs fractional GPUs. Each vLLM
engine that shares a card, Voxtral's and a Ray Serve LLM entry's, must also fit its own share byte for byte (weights +
activations + KV cache); the plans are printed. Exit status 1 when any GPU is over-committed or a model does not fit
its share.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import yaml

from serve_app.config import AppConfig
from serve_app.gpu.budget import BudgetError, GiB, plan_memory
from serve_app.gpu.llm_budget import llm_share, plan_llm_memory

APP_BUILDER = "serve_app.app:build_app"
LLM_BUILDERS = ("ray.serve.llm:build_openai_app", "ray.serve.llm:build_llm_deployment")


@dataclass(frozen=True)
class GpuUser:
    name: str
    fraction: float
    replicas: int
    min_replicas: int = 1


@dataclass
class Gpu:
    index: int
    memory_bytes: int
    users: list[tuple[str, float]] = field(default_factory=list)

    @property
    def used(self) -> float:
        return sum(f for _, f in self.users)


@dataclass
class Findings:
    """What a config asks of the GPUs: the deployments that hold shares, their byte plans, and what cannot work."""

    users: list[GpuUser] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add_user(self, name: str, options: dict, share: float) -> None:
        if share:
            low, high = _replicas(options)
            self.users.append(GpuUser(name, share, high, low))

    def add_plan(self, name: str, make_plan) -> None:
        """Record the byte plan ``make_plan()`` returns (None: nothing to plan), or why it fails."""
        try:
            plan = make_plan()
        except BudgetError as e:
            self.problems.append(f"{name}: {e}")
        else:
            if plan is not None:
                self.plans.append(f"{name}: {plan.describe()}, kv_cache_memory_bytes {plan.kv_cache_bytes}")


def _replicas(options: dict) -> tuple[int, int]:
    """(fewest, most) replicas of a deployment."""
    auto = options.get("autoscaling_config") or {}
    if auto:
        low = int(auto.get("min_replicas", 1))
        return low, int(auto.get("max_replicas", low))
    n = options.get("num_replicas", 1)
    n = 1 if n in (None, "auto") else int(n)
    return n, n


def _share(options: dict) -> float:
    return float((options.get("ray_actor_options") or {}).get("num_gpus") or 0)


def _our_app(found: Findings, app_name: str, args: dict, overrides: dict, device_bytes: int) -> None:
    config = AppConfig.model_validate(args)
    for m in config.models:
        opts = {**m.deployment.serve_options(), **overrides.pop(f"model-{m.name}", {})}
        share = _share(opts)
        found.add_user(f"{app_name}/{m.name}", opts, share)
        if m.backend == "voxtral" and share:
            found.add_plan(f"{app_name}/{m.name}", lambda: plan_memory(m.voxtral, m.voxtral.gpu_share or share, device_bytes))


def _llm_app(found: Findings, app_name: str, args: dict, device_bytes: int) -> None:
    for llm in args.get("llm_configs", []):
        name = f"{app_name}/{llm.get('model_loading_config', {}).get('model_id', 'llm')}"
        found.add_user(name, llm.get("deployment_config") or {}, llm_share(llm))
        found.add_plan(name, lambda: plan_llm_memory(llm, device_bytes))


def gpu_users(serve_config: dict, device_bytes: int) -> Findings:
    """Every GPU-holding deployment of the config, the byte plans of vLLM engines that share a card, the problems."""
    found = Findings()
    for app in serve_config.get("applications", []):
        app_name = app.get("name", "default")
        overrides = {d["name"]: d for d in app.get("deployments", []) if "name" in d}
        if app.get("import_path") == APP_BUILDER:
            _our_app(found, app_name, app.get("args") or {}, overrides, device_bytes)
        elif app.get("import_path") in LLM_BUILDERS:
            _llm_app(found, app_name, app.get("args") or {}, device_bytes)
        for name, opts in overrides.items():
            found.add_user(f"{app_name}/{name}", opts, _share(opts))
    return found


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


def cards_needed(users: list[GpuUser], memory_bytes: int, at_least: bool = False) -> int:
    """The fewest cards on which every replica packs: at each deployment's most replicas, or its fewest."""
    if at_least:
        users = [GpuUser(u.name, u.fraction, u.min_replicas, u.min_replicas) for u in users]
    too_big = [f"{u.name} ({u.fraction:g} GPU)" for u in users if u.fraction > 1.0 + 1e-9]
    if too_big:
        raise ValueError(f"a replica needs more than one card: {', '.join(too_big)}")
    total = sum(u.replicas for u in users)
    return next(n for n in range(total + 1) if not pack(users, n, memory_bytes)[1])


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
    found = gpu_users(serve_config, memory)
    for plan in found.plans:
        print(f"memory plan {plan}")
    cards, pending = pack(found.users, args.gpus, memory)
    for card in cards:
        print(f"GPU {card.index}: {card.used:.2f} of 1.00 used, {(1 - card.used) * memory / GiB:.2f} GiB left")
        for name, fraction in card.users:
            print(f"  {fraction:5.2f}  {fraction * memory / GiB:6.2f} GiB  {name}")
    for problem in found.problems + pending:
        print(f"OVER-COMMITTED: {problem}")
    return 1 if found.problems or pending else 0


if __name__ == "__main__":
    sys.exit(main())
