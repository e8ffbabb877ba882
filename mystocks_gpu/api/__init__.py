"""The service API: a thin gRPC gateway in front of the topics (``mystocks-gpu gateway``).

Every call becomes a command on ``cmd.jobs`` or a read of a status/result/market-data topic; the
gateway holds no state the topics do not. Protocol: ``mystocks_gpu/api/protos/*.proto`` (package
``mystocks.v1``); the generated modules beside them are committed and checked to be current
(:mod:`.proto_codegen`)."""
