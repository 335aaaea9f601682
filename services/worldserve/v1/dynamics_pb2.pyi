from worldserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StepRequest(_message.Message):
    __slots__ = ("session_id", "action", "expected_step", "format", "guidance", "request_id", "deadline_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_STEP_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    action: _common_pb2.Action
    expected_step: int
    format: _common_pb2.FrameFormat
    guidance: float
    request_id: str
    deadline_ms: int
    def __init__(self, session_id: _Optional[str] = ..., action: _Optional[_Union[_common_pb2.Action, _Mapping]] = ..., expected_step: _Optional[int] = ..., format: _Optional[_Union[_common_pb2.FrameFormat, str]] = ..., guidance: _Optional[float] = ..., request_id: _Optional[str] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("session_id", "step", "frame", "event")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    step: int
    frame: _common_pb2.Frame
    event: str
    def __init__(self, session_id: _Optional[str] = ..., step: _Optional[int] = ..., frame: _Optional[_Union[_common_pb2.Frame, _Mapping]] = ..., event: _Optional[str] = ...) -> None: ...

class StepBatchRequest(_message.Message):
    __slots__ = ("steps",)
    STEPS_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[StepRequest]
    def __init__(self, steps: _Optional[_Iterable[_Union[StepRequest, _Mapping]]] = ...) -> None: ...

class StepResult(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: StepResponse
    error: _common_pb2.ErrorStatus
    def __init__(self, ok: _Optional[_Union[StepResponse, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.ErrorStatus, _Mapping]] = ...) -> None: ...

class StepBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[StepResult]
    def __init__(self, results: _Optional[_Iterable[_Union[StepResult, _Mapping]]] = ...) -> None: ...

class RolloutRequest(_message.Message):
    __slots__ = ("session_id", "actions", "format", "expected_step", "guidance", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_STEP_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    actions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Action]
    format: _common_pb2.FrameFormat
    expected_step: int
    guidance: float
    request_id: str
    def __init__(self, session_id: _Optional[str] = ..., actions: _Optional[_Iterable[_Union[_common_pb2.Action, _Mapping]]] = ..., format: _Optional[_Union[_common_pb2.FrameFormat, str]] = ..., expected_step: _Optional[int] = ..., guidance: _Optional[float] = ..., request_id: _Optional[str] = ...) -> None: ...

class PlayRequest(_message.Message):
    __slots__ = ("session_id", "action", "format", "request_id", "deadline_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    action: _common_pb2.Action
    format: _common_pb2.FrameFormat
    request_id: str
    deadline_ms: int
    def __init__(self, session_id: _Optional[str] = ..., action: _Optional[_Union[_common_pb2.Action, _Mapping]] = ..., format: _Optional[_Union[_common_pb2.FrameFormat, str]] = ..., request_id: _Optional[str] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    default_model: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., default_model: _Optional[str] = ...) -> None: ...

class ModelRuntime(_message.Message):
    __slots__ = ("device", "dtype", "attention_backend", "decode_kernel", "batch_invariant")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_BACKEND_FIELD_NUMBER: _ClassVar[int]
    DECODE_KERNEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_INVARIANT_FIELD_NUMBER: _ClassVar[int]
    device: str
    dtype: str
    attention_backend: str
    decode_kernel: str
    batch_invariant: bool
    def __init__(self, device: _Optional[str] = ..., dtype: _Optional[str] = ..., attention_backend: _Optional[str] = ..., decode_kernel: _Optional[str] = ..., batch_invariant: _Optional[bool] = ...) -> None: ...

class MouseAxis(_message.Message):
    __slots__ = ("name", "min", "max")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    name: str
    min: float
    max: float
    def __init__(self, name: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "frame_width", "frame_height", "keys", "mouse_axes", "discrete_actions", "context_frames", "sample_steps", "default_guidance", "events_supported", "tier", "latent_actions", "runtime", "parameters", "is_default", "text_dim", "text_len", "events")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FRAME_WIDTH_FIELD_NUMBER: _ClassVar[int]
    FRAME_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    MOUSE_AXES_FIELD_NUMBER: _ClassVar[int]
    DISCRETE_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FRAMES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_STEPS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    LATENT_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    TEXT_DIM_FIELD_NUMBER: _ClassVar[int]
    TEXT_LEN_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    frame_width: int
    frame_height: int
    keys: _containers.RepeatedScalarFieldContainer[str]
    mouse_axes: _containers.RepeatedCompositeFieldContainer[MouseAxis]
    discrete_actions: int
    context_frames: int
    sample_steps: int
    default_guidance: float
    events_supported: bool
    tier: str
    latent_actions: int
    runtime: ModelRuntime
    parameters: int
    is_default: bool
    text_dim: int
    text_len: int
    events: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., frame_width: _Optional[int] = ..., frame_height: _Optional[int] = ..., keys: _Optional[_Iterable[str]] = ..., mouse_axes: _Optional[_Iterable[_Union[MouseAxis, _Mapping]]] = ..., discrete_actions: _Optional[int] = ..., context_frames: _Optional[int] = ..., sample_steps: _Optional[int] = ..., default_guidance: _Optional[float] = ..., events_supported: _Optional[bool] = ..., tier: _Optional[str] = ..., latent_actions: _Optional[int] = ..., runtime: _Optional[_Union[ModelRuntime, _Mapping]] = ..., parameters: _Optional[int] = ..., is_default: _Optional[bool] = ..., text_dim: _Optional[int] = ..., text_len: _Optional[int] = ..., events: _Optional[_Iterable[str]] = ...) -> None: ...
