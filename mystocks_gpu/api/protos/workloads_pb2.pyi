from mystocks_gpu.api.protos import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class OrderRequest(_message.Message):
    __slots__ = ("spec_json", "priority", "deadline_s", "job_id")
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    spec_json: str
    priority: int
    deadline_s: float
    job_id: str
    def __init__(self, spec_json: _Optional[str] = ..., priority: _Optional[int] = ..., deadline_s: _Optional[float] = ..., job_id: _Optional[str] = ...) -> None: ...
