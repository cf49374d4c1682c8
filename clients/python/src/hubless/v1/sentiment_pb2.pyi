from hubless.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Polarity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLARITY_UNSPECIFIED: _ClassVar[Polarity]
    POLARITY_NEGATIVE: _ClassVar[Polarity]
    POLARITY_NEUTRAL: _ClassVar[Polarity]
    POLARITY_POSITIVE: _ClassVar[Polarity]
POLARITY_UNSPECIFIED: Polarity
POLARITY_NEGATIVE: Polarity
POLARITY_NEUTRAL: Polarity
POLARITY_POSITIVE: Polarity

class AnalyzeSentimentRequest(_message.Message):
    __slots__ = ("texts", "model", "truncation")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    model: str
    truncation: _common_pb2.Truncation
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., truncation: _Optional[_Union[_common_pb2.Truncation, str]] = ...) -> None: ...

class SentimentResult(_message.Message):
    __slots__ = ("label", "score", "polarity", "polarity_score", "scores", "truncated")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    POLARITY_FIELD_NUMBER: _ClassVar[int]
    POLARITY_SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    polarity: Polarity
    polarity_score: float
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.LabelScore]
    truncated: bool
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., polarity: _Optional[_Union[Polarity, str]] = ..., polarity_score: _Optional[float] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.LabelScore, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class AnalyzeSentimentResponse(_message.Message):
    __slots__ = ("results", "model")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SentimentResult]
    model: _common_pb2.ModelRef
    def __init__(self, results: _Optional[_Iterable[_Union[SentimentResult, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...
