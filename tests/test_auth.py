"""API keys: /v1 needs a valid bearer key once keys are configured; /health stays open; 401s are OpenAI-shaped."""

from __future__ import annotations

import httpx
import pytest
from conftest import WHISPER_TEST_MODEL
from ray import serve

from serve_app.api.auth import bearer_token, key_matches, load_api_keys
from serve_app.config import AppConfig, AuthConfig

KEYS = ("sk-test-first-0123456789", "sk-test-second-abcdefghij")


@pytest.fixture(scope="module")
def auth_url(deploy_app, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("auth") / "api_keys"
    key_file.write_text(f"# keys of the auth test app\n{KEYS[0]}\n\n{KEYS[1]}\n")
    args = {"models": [WHISPER_TEST_MODEL], "auth": {"api_keys_file": str(key_file), "api_keys_env": None}}
    yield deploy_app("auth", args)
    serve.delete("auth")


def _assert_401(r: httpx.Response, message_part: str) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    error = r.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["code"] == "invalid_api_key"
    assert message_part in error["message"]
    for key in KEYS:
        assert key not in r.text


def test_health_is_open(auth_url):
    r = httpx.get(f"{auth_url}/health", timeout=30)
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/whisper-1", "/v1/no-such-route"])
def test_no_key_is_refused(auth_url, path):
    _assert_401(httpx.get(f"{auth_url}{path}", timeout=30), "Missing API key")


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {KEYS[0]}x", f"Bearer {KEYS[0][:-1]}", "Bearer sk-wrong", f"bearer {KEYS[1].upper()}"],
)
def test_wrong_key_is_refused(auth_url, authorization):
    r = httpx.get(f"{auth_url}/v1/models", headers={"Authorization": authorization}, timeout=30)
    _assert_401(r, "Incorrect API key")


@pytest.mark.parametrize("authorization", [f"Basic {KEYS[0]}", KEYS[0], "Bearer", f"Token {KEYS[0]}"])
def test_malformed_authorization_is_refused(auth_url, authorization):
    r = httpx.get(f"{auth_url}/v1/models", headers={"Authorization": authorization}, timeout=30)
    _assert_401(r, "Missing API key")


@pytest.mark.parametrize("key", KEYS)
def test_right_key_is_accepted(auth_url, key):
    r = httpx.get(f"{auth_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert {m["id"] for m in r.json()["data"]} == {"whisper-tiny.en", "whisper-1"}


def test_transcription_needs_the_key(auth_url, audio_dir):
    audio = (audio_dir / "en_pocketsphinx_goforward.wav").read_bytes()
    files = {"file": ("goforward.wav", audio, "audio/wav")}
    refused = httpx.post(f"{auth_url}/v1/audio/transcriptions", files=files, data={"model": "whisper-1"}, timeout=60)
    _assert_401(refused, "Missing API key")
    r = httpx.post(
        f"{auth_url}/v1/audio/transcriptions",
        files=files,
        data={"model": "whisper-1"},
        headers={"Authorization": f"Bearer {KEYS[1]}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert "forward" in r.json()["text"].lower()


def test_chat_needs_the_key(auth_url):
    body = {"model": "whisper-1", "messages": [{"role": "user", "content": "hello"}]}
    _assert_401(httpx.post(f"{auth_url}/v1/chat/completions", json=body, timeout=30), "Missing API key")


def test_keys_from_environment_and_file(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# comment\n  file-key  \n\n")
    config = AuthConfig(api_keys_env="MY_KEYS", api_keys_file=str(key_file))
    assert load_api_keys(config, {"MY_KEYS": " env-a, env-b ,,"}) == {"env-a", "env-b", "file-key"}
    assert load_api_keys(AuthConfig(api_keys_env="MY_KEYS"), {}) == frozenset()


def test_missing_key_file_fails_the_start(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_api_keys(AuthConfig(api_keys_file=str(tmp_path / "absent")), {})


def test_default_config_reads_the_environment_only():
    auth = AppConfig().auth
    assert (auth.api_keys_env, auth.api_keys_file) == ("STT_API_KEYS", None)
    assert load_api_keys(auth, {"STT_API_KEYS": "k1,k2"}) == {"k1", "k2"}


def test_bearer_parsing_and_matching():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token(None) is None
    keys = frozenset({"alpha", "beta"})
    assert key_matches("beta", keys)
    assert not key_matches("gamma", keys)
    assert not key_matches("", keys)
    assert not key_matches("beta", frozenset())


def test_realtime_needs_a_key_in_the_header_or_the_browser_subprotocol(auth_url):
    import asyncio
    import json

    import websockets

    url = auth_url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"

    async def first_event(**kw) -> dict:
        async with websockets.connect(url, **kw) as ws:
            return json.loads(await ws.recv())

    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(first_event(additional_headers={"Authorization": "Bearer wrong"}))
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body)["error"]["code"] == "invalid_api_key"
    with pytest.raises(websockets.InvalidStatus):
        asyncio.run(first_event())
    by_header = asyncio.run(first_event(additional_headers={"Authorization": f"Bearer {KEYS[0]}"}))
    by_subprotocol = asyncio.run(first_event(subprotocols=["realtime", f"openai-insecure-api-key.{KEYS[1]}"]))
    assert by_header["type"] == by_subprotocol["type"] == "session.created"
