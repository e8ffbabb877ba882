"""Redis connection checks: tell refused credentials / TLS failures from an unreachable server.

A wrong password is not an outage: the job plane retries an outage for minutes, but
:func:`check_redis` makes a refused login fail at once with :class:`RedisAuthFailed` naming the
URL (password masked) and what to check. ``rediss://`` URLs take ``?ssl_ca_certs=PATH`` (the CA
of the secure stack).
"""

from __future__ import annotations

from typing import Any

from mystocks_gpu.infra.config import mask_url
from mystocks_gpu.infra.exceptions import RedisAuthFailed

_AUTH_WORDS = ("WRONGPASS", "NOAUTH", "invalid username-password", "Authentication required", "NOPERM",
               "invalid password", "AUTH <password> called without any password")


def is_auth_error(exc: BaseException) -> bool:
    """True when ``exc`` is Redis refusing the client's credentials or permissions."""
    import redis

    if isinstance(exc, (redis.AuthenticationError, redis.exceptions.NoPermissionError)):
        return True
    text = str(exc)
    return isinstance(exc, redis.RedisError) and any(w.lower() in text.lower() for w in _AUTH_WORDS)


def is_tls_error(exc: BaseException) -> bool:
    """True when ``exc`` comes from a failed TLS handshake or certificate check."""
    text = str(exc).lower()
    return "ssl" in text or "certificate" in text or "tls" in text


def auth_message(url: str, exc: BaseException) -> str:
    """The one-line error for a refused login or a failed TLS handshake (password masked)."""
    if is_tls_error(exc) and not is_auth_error(exc):
        return (f"TLS with Redis at {mask_url(url)} failed ({exc}); check redis.url: rediss:// and "
                "?ssl_ca_certs=<the CA that signed the server's certificate>")
    return (f"Redis at {mask_url(url)} refused the credentials ({exc}); check the user and password in "
            "redis.url (MYSTOCKS_REDIS__URL: rediss://USER:PASSWORD@HOST:PORT/0)")


def check_redis(client: Any, url: str) -> None:
    """PING through ``client``; :class:`RedisAuthFailed` at once when Redis refuses the credentials or
    the TLS handshake fails; other errors (an outage) are re-raised as they are."""
    import redis

    try:
        client.ping()
    except redis.RedisError as exc:
        if is_auth_error(exc) or (is_tls_error(exc) and isinstance(exc, redis.ConnectionError)
                                  and "refused" not in str(exc).lower()):
            raise RedisAuthFailed(auth_message(url, exc)) from None
        raise
