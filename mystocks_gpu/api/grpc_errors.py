"""How the gateway's errors become gRPC status codes (every one with a message saying why).

=============================================  ======================
cause                                          code
=============================================  ======================
invalid spec / request field (names the field) ``INVALID_ARGUMENT``
unknown job                                    ``NOT_FOUND``
job exists with that id                        ``ALREADY_EXISTS``
job not finished / kind not installed          ``FAILED_PRECONDITION``
no / wrong / expired bearer token              ``UNAUTHENTICATED``
token lacks the role / someone else's job      ``PERMISSION_DENIED``
broker down (command not acknowledged, view)   ``UNAVAILABLE``
slow stream closed (bounded queue overflowed)  ``RESOURCE_EXHAUSTED``
deadline passed                                ``DEADLINE_EXCEEDED``
anything else                                  ``INTERNAL``
=============================================  ======================
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from confluent_kafka import KafkaException

from mystocks_gpu.infra.exceptions import BrokerUnreachable, DeliveryFailed
from mystocks_gpu.processors.exceptions import JobSpecError

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


class ApiError(Exception):
    """An error with its gRPC status code."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class NotFound(ApiError):
    code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(ApiError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(ApiError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(ApiError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(ApiError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ApiError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC code and message of an exception raised by a handler."""
    if isinstance(exc, ApiError):
        return exc.code, str(exc)
    if isinstance(exc, JobSpecError):
        return grpc.StatusCode.INVALID_ARGUMENT, f"invalid spec: {exc}"
    if isinstance(exc, (BrokerUnreachable, DeliveryFailed, KafkaException, ConnectionError)):
        return grpc.StatusCode.UNAVAILABLE, f"the Kafka broker is unavailable: {exc}"
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "deadline exceeded"
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    code, msg = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("gateway: internal error", exc_info=exc)
    await context.abort(code, msg)


def mapped(fn: F) -> F:
    """Wrap a servicer method (coroutine or async generator) so exceptions become statuses."""
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def gen(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in fn(self, request, context):
                    yield item
            except (grpc.aio.AbortError, GeneratorExit):
                raise
            except Exception as exc:
                await _abort(context, exc)
        return gen  # type: ignore[return-value]

    @functools.wraps(fn)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)
    return unary  # type: ignore[return-value]
