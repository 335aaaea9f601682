from worldserve.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateImageRequest(_message.Message):
    __slots__ = ("prompt", "seed", "width", "height", "steps", "guidance", "format")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    seed: int
    width: int
    height: int
    steps: int
    guidance: float
    format: _common_pb2.FrameFormat
    def __init__(self, prompt: _Optional[str] = ..., seed: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., steps: _Optional[int] = ..., guidance: _Optional[float] = ..., format: _Optional[_Union[_common_pb2.FrameFormat, str]] = ...) -> None: ...

class GenerateImageResponse(_message.Message):
    __slots__ = ("image", "model", "understood")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    UNDERSTOOD_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Frame
    model: str
    understood: _common_pb2.Understood
    def __init__(self, image: _Optional[_Union[_common_pb2.Frame, _Mapping]] = ..., model: _Optional[str] = ..., understood: _Optional[_Union[_common_pb2.Understood, _Mapping]] = ...) -> None: ...
