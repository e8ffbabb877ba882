"""``mystocks_gpu.client``: the Python client of the gRPC gateway (see :mod:`mystocks_gpu.api.grpc_client`)."""

from mystocks_gpu.api.grpc_client import GatewayClient, open_channel, state_name

__all__ = ["GatewayClient", "open_channel", "state_name"]
