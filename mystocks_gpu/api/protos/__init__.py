"""The gateway's protocol (package ``mystocks.v1``): the ``.proto`` files and the modules grpcio-tools
generates from them (``python -m mystocks_gpu.api.proto_codegen`` regenerates them)."""
