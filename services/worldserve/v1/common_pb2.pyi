from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FrameFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_FORMAT_UNSPECIFIED: _ClassVar[FrameFormat]
    FRAME_FORMAT_PNG: _ClassVar[FrameFormat]
    FRAME_FORMAT_JPEG: _ClassVar[FrameFormat]
    FRAME_FORMAT_RAW_RGB8: _ClassVar[FrameFormat]
FRAME_FORMAT_UNSPECIFIED: FrameFormat
FRAME_FORMAT_PNG: FrameFormat
FRAME_FORMAT_JPEG: FrameFormat
FRAME_FORMAT_RAW_RGB8: FrameFormat

class Frame(_message.Message):
    __slots__ = ("format", "data", "width", "height")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    format: FrameFormat
    data: bytes
    width: int
    height: int
    def __init__(self, format: _Optional[_Union[FrameFormat, str]] = ..., data: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("keys", "mouse", "event", "event_text")
    class MouseEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    KEYS_FIELD_NUMBER: _ClassVar[int]
    MOUSE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    EVENT_TEXT_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    mouse: _containers.ScalarMap[str, float]
    event: str
    event_text: str
    def __init__(self, keys: _Optional[_Iterable[str]] = ..., mouse: _Optional[_Mapping[str, float]] = ..., event: _Optional[str] = ..., event_text: _Optional[str] = ...) -> None: ...

class WorldObject(_message.Message):
    __slots__ = ("colour", "kind", "side")
    COLOUR_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    colour: str
    kind: str
    side: str
    def __init__(self, colour: _Optional[str] = ..., kind: _Optional[str] = ..., side: _Optional[str] = ...) -> None: ...

class WorldSpec(_message.Message):
    __slots__ = ("objects", "ground", "time_of_day", "rain")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    GROUND_FIELD_NUMBER: _ClassVar[int]
    TIME_OF_DAY_FIELD_NUMBER: _ClassVar[int]
    RAIN_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[WorldObject]
    ground: str
    time_of_day: str
    rain: bool
    def __init__(self, objects: _Optional[_Iterable[_Union[WorldObject, _Mapping]]] = ..., ground: _Optional[str] = ..., time_of_day: _Optional[str] = ..., rain: _Optional[bool] = ...) -> None: ...

class Understood(_message.Message):
    __slots__ = ("spec", "caption", "source")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    spec: WorldSpec
    caption: str
    source: str
    def __init__(self, spec: _Optional[_Union[WorldSpec, _Mapping]] = ..., caption: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class ErrorStatus(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...
