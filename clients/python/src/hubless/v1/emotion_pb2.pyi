from hubless.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DetectEmotionRequest(_message.Message):
    __slots__ = ("texts", "model", "truncation")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    model: str
    truncation: _common_pb2.Truncation
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., truncation: _Optional[_Union[_common_pb2.Truncation, str]] = ...) -> None: ...

class EmotionResult(_message.Message):
    __slots__ = ("label", "score", "scores", "truncated")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.LabelScore]
    truncated: bool
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.LabelScore, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class DetectEmotionResponse(_message.Message):
    __slots__ = ("results", "model")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EmotionResult]
    model: _common_pb2.ModelRef
    def __init__(self, results: _Optional[_Iterable[_Union[EmotionResult, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...
