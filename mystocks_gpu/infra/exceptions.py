"""Errors of the infra layer: the local stack, external clients."""

from mystocks_gpu.exceptions import MyStocksError


class StackError(MyStocksError):
    """The local Kafka/Redis stack could not be started, stopped or reached."""


class BrokerUnreachable(MyStocksError):
    """No Kafka broker answered at the configured bootstrap servers within the timeout."""


class BrokerAuthFailed(MyStocksError):
    """A broker answered but refused the client's credentials (SASL) or the TLS handshake failed."""

    exit_code = 2


class DeliveryFailed(MyStocksError):
    """The broker did not acknowledge records a producer sent (rejected, or not delivered in time)."""
