"""API-key auth: the key from `serve.api_key_env`, checked in constant time on every `/v1/*` request."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os

from jz3_jax.errors import UserError
from jz3_jax.serve.protocol import ApiError


def api_key(env_name: str) -> str | None:
    """The key in `$env_name`, or None when `env_name` is empty (no auth). A named variable that is
    unset or empty is a config error: serving without auth by accident is what this guards against."""
    if not env_name:
        return None
    key = os.environ.get(env_name, "")
    if not key:
        raise UserError(f"serve.api_key_env={env_name!r} but that environment variable is not set or empty")
    return key


def check(authorization: str | None, key: str | None) -> None:
    """Raise ApiError 401 unless `authorization` is `Bearer <key>` (always passes when `key` is None)."""
    if key is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    # compare_digest on bytes: its time does not depend on where the first differing byte is.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key")


def is_loopback(host: str) -> bool:
    """Whether binding `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_open(host: str, key: str | None, logger: logging.Logger) -> bool:
    """Log a warning (and return True) when `host` is reachable from other machines and there is no key."""
    if key is None and not is_loopback(host):
        logger.warning("serve: listening on %s without an API key: anyone who can reach the port can use the "
                       "model (set serve.api_key_env)", host)
        return True
    return False
