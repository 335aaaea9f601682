from worldserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Session(_message.Message):
    __slots__ = ("session_id", "model", "prompt", "seed", "step", "parent_id", "fork_step", "created_at", "updated_at", "ttl_s", "width", "height", "first_frame", "text_tokens", "understood")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    FORK_STEP_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    TEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    UNDERSTOOD_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    prompt: str
    seed: int
    step: int
    parent_id: str
    fork_step: int
    created_at: float
    updated_at: float
    ttl_s: int
    width: int
    height: int
    first_frame: _common_pb2.Frame
    text_tokens: int
    understood: _common_pb2.Understood
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[str] = ..., seed: _Optional[int] = ..., step: _Optional[int] = ..., parent_id: _Optional[str] = ..., fork_step: _Optional[int] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., ttl_s: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., first_frame: _Optional[_Union[_common_pb2.Frame, _Mapping]] = ..., text_tokens: _Optional[int] = ..., understood: _Optional[_Union[_common_pb2.Understood, _Mapping]] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("prompt", "image", "seed", "image_steps", "image_guidance", "ttl_s", "include_first_frame", "format", "model", "text_embedding")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    IMAGE_STEPS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    image: _common_pb2.Frame
    seed: int
    image_steps: int
    image_guidance: float
    ttl_s: int
    include_first_frame: bool
    format: _common_pb2.FrameFormat
    model: str
    text_embedding: bytes
    def __init__(self, prompt: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Frame, _Mapping]] = ..., seed: _Optional[int] = ..., image_steps: _Optional[int] = ..., image_guidance: _Optional[float] = ..., ttl_s: _Optional[int] = ..., include_first_frame: _Optional[bool] = ..., format: _Optional[_Union[_common_pb2.FrameFormat, str]] = ..., model: _Optional[str] = ..., text_embedding: _Optional[bytes] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions", "next_page_token")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    next_page_token: str
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ForkSessionRequest(_message.Message):
    __slots__ = ("session_id", "step", "seed")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    step: int
    seed: int
    def __init__(self, session_id: _Optional[str] = ..., step: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class DeleteSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class DeleteSessionResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class ExportSessionRequest(_message.Message):
    __slots__ = ("session_id", "format", "include_frames", "from_step")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    format: _common_pb2.FrameFormat
    include_frames: bool
    from_step: int
    def __init__(self, session_id: _Optional[str] = ..., format: _Optional[_Union[_common_pb2.FrameFormat, str]] = ..., include_frames: _Optional[bool] = ..., from_step: _Optional[int] = ...) -> None: ...

class TrajectoryStep(_message.Message):
    __slots__ = ("step", "action", "frame", "text_embedding")
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    TEXT_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    step: int
    action: _common_pb2.Action
    frame: _common_pb2.Frame
    text_embedding: bytes
    def __init__(self, step: _Optional[int] = ..., action: _Optional[_Union[_common_pb2.Action, _Mapping]] = ..., frame: _Optional[_Union[_common_pb2.Frame, _Mapping]] = ..., text_embedding: _Optional[bytes] = ...) -> None: ...
