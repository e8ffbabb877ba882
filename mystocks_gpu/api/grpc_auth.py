"""Per-call bearer-token authentication of the gateway (over ``infra.api_tokens``).

Every call but the health service's carries metadata ``authorization: Bearer <token>``. With
``api.auth_file`` set, the token's SHA-256 digest must be in that file (tokens are never stored);
otherwise the call ends with ``UNAUTHENTICATED`` before any handler runs. An entry may carry
``"expires_ns"`` (ns since epoch): after it the token is refused as expired. Roles: ``Submit*`` and
``ScheduleOrder`` need ``submit``, everything else ``read``; ``admin`` implies both and lets a caller
see every requester's jobs (others see their own only) -> ``PERMISSION_DENIED``.

Without ``api.auth_file`` every call is the anonymous admin (loopback development set-ups; the
gateway warns when it binds beyond loopback like that).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from mystocks_gpu.infra.api_tokens import ANONYMOUS, Identity, TokenStore, parse_bearer
from mystocks_gpu.infra.clock import SYSTEM_CLOCK, Clock
from mystocks_gpu.infra.config import ApiConfig

#: method-name prefixes that need the ``submit`` role
SUBMIT_METHODS = ("Submit", "ScheduleOrder")
#: services callable without a token
PUBLIC_SERVICES = ("/grpc.health.v1.Health/",)


class Unauthenticated(Exception):
    """No, a wrong or an expired token."""


class GatewayAuth:
    """The token database of one gateway (``None`` store: anonymous admins)."""

    def __init__(self, api: ApiConfig, clock: Clock = SYSTEM_CLOCK, store: TokenStore | None = None) -> None:
        self.clock = clock
        self.store = store if store is not None else (TokenStore.load(api.auth_file) if api.auth_file else None)
        self.expires: dict[str, int] = {}
        if api.auth_file:
            data = json.loads(Path(api.auth_file).read_text())
            for t in data.get("tokens", []):
                if isinstance(t, dict) and t.get("expires_ns") is not None:
                    self.expires[str(t["name"])] = int(t["expires_ns"])

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def identify(self, metadata: Any) -> Identity:
        """The identity of a call's metadata; :class:`Unauthenticated` says why not."""
        if self.store is None:
            return ANONYMOUS
        header = None
        for k, v in metadata or ():
            if k.lower() == "authorization":
                header = v.decode() if isinstance(v, bytes) else str(v)
        token = parse_bearer(header)
        if token is None:
            raise Unauthenticated("a bearer token is required (metadata 'authorization: Bearer <token>')")
        ident = self.store.authenticate(token)
        if ident is None:
            raise Unauthenticated("the bearer token is not valid")
        exp = self.expires.get(ident.name)
        if exp is not None and self.clock.now_ns() >= exp:
            raise Unauthenticated(f"the bearer token of {ident.name!r} has expired")
        return ident


def required_role(method: str) -> str | None:
    """The role a full method name (``/pkg.Service/Method``) needs; None for public services."""
    if method.startswith(PUBLIC_SERVICES):
        return None
    name = method.rsplit("/", 1)[-1]
    return "submit" if name.startswith(SUBMIT_METHODS) else "read"


def _denier(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s shape that ends every call with ``code``."""
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield None  # pragma: no cover - never reached

    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream, **kw)
    return grpc.unary_unary_rpc_method_handler(unary, **kw)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid token (``UNAUTHENTICATED``) or without the method's role
    (``PERMISSION_DENIED``) before the handler runs."""

    def __init__(self, auth: GatewayAuth) -> None:
        self.auth = auth

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        role = required_role(handler_call_details.method)
        if handler is None or role is None:
            return handler
        try:
            ident = self.auth.identify(handler_call_details.invocation_metadata)
        except Unauthenticated as exc:
            return _denier(handler, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        if not ident.has(role):
            return _denier(handler, grpc.StatusCode.PERMISSION_DENIED, f"token {ident.name!r} lacks the {role!r} role")
        return handler


def caller(auth: GatewayAuth, context: grpc.aio.ServicerContext) -> Identity:
    """The identity of the current call (the interceptor has already checked it)."""
    try:
        return auth.identify(context.invocation_metadata())
    except Unauthenticated:  # pragma: no cover - the interceptor refused it already
        return Identity("unknown", frozenset())
