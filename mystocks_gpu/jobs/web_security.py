"""Security of the control app's HTTP/WebSocket server (aiohttp middleware over ``infra.api_tokens``).

Every request, in this order:

1. **Size**: a body over ``api.max_body_bytes`` -> 413 (before it is read; aiohttp's own limit is
   the same).
2. **Origin**: a request carrying an ``Origin`` header (every browser request, WebSocket handshakes
   included) is refused with 403 unless that origin is in ``api.allowed_origins``; requests without
   one (CLI, curl, servers) pass. A cross-site page can therefore neither submit nor cancel jobs nor
   open the WebSocket.
3. **Content type**: POST/PUT/PATCH must be ``application/json`` -> else 415 (a ``text/plain``
   "simple request" that a browser sends cross-site without a preflight is never read).
4. **Authentication**: with ``api.auth_file`` set, every route but ``GET /health`` needs
   ``Authorization: Bearer <token>`` -> 401 (``WWW-Authenticate: Bearer``) without a valid one.
   Without it, requests are anonymous admins (fine on loopback; :func:`exposure_warning` otherwise).
5. **Role**: ``POST /jobs`` and ``DELETE /jobs/{id}`` need ``submit``; every other route ``read``
   -> 403 naming the role. Ownership (non-admins see and cancel only their own jobs) is checked
   by the handlers with :func:`identity`.
6. **Rate limit**: ``POST /jobs`` spends one request of the identity's bucket
   (``api.submit_rate_per_s``, ``api.submit_burst``) -> 429 with ``Retry-After``.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import ssl
from typing import Any

from aiohttp import web

from mystocks_gpu.infra.api_tokens import ANONYMOUS, Identity, RateLimiter, TokenStore, parse_bearer
from mystocks_gpu.infra.config import ApiConfig

log = logging.getLogger(__name__)
#: where a request's :class:`Identity` is kept (a typed key on aiohttp >= 3.12)
IDENTITY_KEY: Any = web.RequestKey("mystocks.identity", Identity) if hasattr(web, "RequestKey") \
    else "mystocks.identity"
_BODY_METHODS = {"POST", "PUT", "PATCH"}
PUBLIC = {("GET", "/health")}


def _deny(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def required_role(method: str, path: str) -> str | None:
    """The role a route needs (None: public)."""
    if (method, path) in PUBLIC:
        return None
    if method == "POST" and path == "/jobs":
        return "submit"
    if method == "DELETE" and path.startswith("/jobs/"):
        return "submit"
    return "read"


def identity(request: web.Request) -> Identity:
    """The authenticated identity of a request (:data:`ANONYMOUS` without a token database)."""
    ident = request.get(IDENTITY_KEY)
    return ident if isinstance(ident, Identity) else ANONYMOUS


class WebSecurity:
    """The checks of the module docstring for one server (``api`` settings, token store, limiter)."""

    def __init__(self, api: ApiConfig, store: TokenStore | None = None, limiter: RateLimiter | None = None) -> None:
        self.api = api
        self.store = store if store is not None else (TokenStore.load(api.auth_file) if api.auth_file else None)
        self.origins = set(api.origins())
        self.limiter = limiter or RateLimiter(api.submit_rate_per_s, api.submit_burst)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > self.api.max_body_bytes:
            return _deny(413, f"request body over {self.api.max_body_bytes} bytes")
        origin = request.headers.get("Origin")
        if origin is not None and origin.strip().rstrip("/").lower() not in self.origins:
            log.warning("refused a request from origin %r to %s %s", origin[:200], request.method, request.path)
            return _deny(403, f"origin {origin[:200]!r} is not allowed (api.allowed_origins)")
        if request.method in _BODY_METHODS and request.content_type != "application/json":
            return _deny(415, f"Content-Type must be application/json, got {request.content_type!r}")
        role = required_role(request.method, request.path)
        ident = ANONYMOUS
        if self.store is not None and role is not None:
            found = self.store.authenticate(parse_bearer(request.headers.get("Authorization")))
            if found is None:
                return _deny(401, "a valid bearer token is required (Authorization: Bearer <token>)",
                             {"WWW-Authenticate": 'Bearer realm="mystocks"'})
            ident = found
        if role is not None and not ident.has(role):
            return _deny(403, f"token {ident.name!r} lacks the {role!r} role")
        request[IDENTITY_KEY] = ident
        if request.method == "POST" and request.path == "/jobs":
            key = ident.name if self.store is not None else f"anonymous@{request.remote}"
            wait = self.limiter.take(key)
            if wait > 0:
                return _deny(429, f"submission rate limit ({self.api.submit_rate_per_s:g}/s, burst "
                                  f"{self.api.submit_burst}) exceeded for {key}",
                             {"Retry-After": str(max(1, math.ceil(wait)))})
        return await handler(request)


def server_ssl_context(api: ApiConfig) -> ssl.SSLContext | None:
    """The server's TLS context when ``api.tls_cert_file`` is set (TLS 1.2+), else None."""
    if api.tls_cert_file is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(api.tls_cert_file, api.tls_key_file)
    return ctx


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api: ApiConfig) -> str | None:
    """A warning when the server binds beyond loopback without TLS or without tokens, else None."""
    if is_loopback(host):
        return None
    missing = [w for w, ok in (("TLS (api.tls_cert_file)", api.tls_cert_file is not None),
                               ("bearer tokens (api.auth_file)", api.auth_file is not None)) if not ok]
    if not missing:
        return None
    return (f"the control app's web server binds {host}, beyond loopback, without {' and '.join(missing)}: "
            "anyone who can reach it can use it")
