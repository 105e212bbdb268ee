import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConceptInfo(_message.Message):
    __slots__ = ("token", "num_vectors", "embedding_dim", "source_format", "size_bytes", "sha256", "created_at", "job_id", "embedding_dims")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    NUM_VECTORS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIMS_FIELD_NUMBER: _ClassVar[int]
    token: str
    num_vectors: int
    embedding_dim: int
    source_format: str
    size_bytes: int
    sha256: str
    created_at: _timestamp_pb2.Timestamp
    job_id: str
    embedding_dims: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, token: _Optional[str] = ..., num_vectors: _Optional[int] = ..., embedding_dim: _Optional[int] = ..., source_format: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., job_id: _Optional[str] = ..., embedding_dims: _Optional[_Iterable[int]] = ...) -> None: ...

class RegisterConceptRequest(_message.Message):
    __slots__ = ("data", "filename", "token", "replace")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    filename: str
    token: str
    replace: bool
    def __init__(self, data: _Optional[bytes] = ..., filename: _Optional[str] = ..., token: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class RegisterConceptResponse(_message.Message):
    __slots__ = ("concept",)
    CONCEPT_FIELD_NUMBER: _ClassVar[int]
    concept: ConceptInfo
    def __init__(self, concept: _Optional[_Union[ConceptInfo, _Mapping]] = ...) -> None: ...

class ListConceptsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListConceptsResponse(_message.Message):
    __slots__ = ("concepts", "next_page_token")
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    concepts: _containers.RepeatedCompositeFieldContainer[ConceptInfo]
    next_page_token: str
    def __init__(self, concepts: _Optional[_Iterable[_Union[ConceptInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetConceptRequest(_message.Message):
    __slots__ = ("token", "include_file")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FILE_FIELD_NUMBER: _ClassVar[int]
    token: str
    include_file: bool
    def __init__(self, token: _Optional[str] = ..., include_file: _Optional[bool] = ...) -> None: ...

class GetConceptResponse(_message.Message):
    __slots__ = ("concept", "file")
    CONCEPT_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    concept: ConceptInfo
    file: bytes
    def __init__(self, concept: _Optional[_Union[ConceptInfo, _Mapping]] = ..., file: _Optional[bytes] = ...) -> None: ...

class DeleteConceptRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class DeleteConceptResponse(_message.Message):
    __slots__ = ("concept",)
    CONCEPT_FIELD_NUMBER: _ClassVar[int]
    concept: ConceptInfo
    def __init__(self, concept: _Optional[_Union[ConceptInfo, _Mapping]] = ...) -> None: ...
