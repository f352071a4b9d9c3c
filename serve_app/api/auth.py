"""API keys: where they come from and how a presented key is checked. The ingress applies them to every request."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Mapping

from serve_app.config import AuthConfig


def load_api_keys(config: AuthConfig, environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    """The accepted keys: the comma-separated environment variable plus the key file (one key a line)."""
    keys: set[str] = set()
    if config.api_keys_env:
        keys.update(k.strip() for k in environ.get(config.api_keys_env, "").split(","))
    if config.api_keys_file:
        with open(config.api_keys_file, encoding="utf-8") as f:  # a configured file that is missing fails the start
            keys.update(line.strip() for line in f if not line.lstrip().startswith("#"))
    keys.discard("")
    return frozenset(keys)


def bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_matches(presented: str, keys: frozenset[str]) -> bool:
    """Constant-time: digests make every comparison the same length, and every key is compared."""
    digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
    found = False
    for key in keys:
        found |= hmac.compare_digest(digest, hashlib.sha256(key.encode("utf-8")).digest())
    return found
