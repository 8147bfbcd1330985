from ttdist.v1 import generation_pb2 as _generation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OpenRequest(_message.Message):
    __slots__ = ("key", "request")
    KEY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    key: int
    request: _generation_pb2.GenerateRequest
    def __init__(self, key: _Optional[int] = ..., request: _Optional[_Union[_generation_pb2.GenerateRequest, _Mapping]] = ...) -> None: ...

class ReplicaStreamRequest(_message.Message):
    __slots__ = ("open", "cancel")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    open: OpenRequest
    cancel: int
    def __init__(self, open: _Optional[_Union[OpenRequest, _Mapping]] = ..., cancel: _Optional[int] = ...) -> None: ...

class StreamError(_message.Message):
    __slots__ = ("code", "message", "streams_failed")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FAILED_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    streams_failed: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., streams_failed: _Optional[int] = ...) -> None: ...

class StreamEntry(_message.Message):
    __slots__ = ("key", "chunk", "complete", "error")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    key: int
    chunk: _generation_pb2.Chunk
    complete: _generation_pb2.Complete
    error: StreamError
    def __init__(self, key: _Optional[int] = ..., chunk: _Optional[_Union[_generation_pb2.Chunk, _Mapping]] = ..., complete: _Optional[_Union[_generation_pb2.Complete, _Mapping]] = ..., error: _Optional[_Union[StreamError, _Mapping]] = ...) -> None: ...

class ReplicaStreamBatch(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[StreamEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[StreamEntry, _Mapping]]] = ...) -> None: ...
