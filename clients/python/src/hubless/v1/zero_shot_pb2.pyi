from hubless.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyZeroShotRequest(_message.Message):
    __slots__ = ("texts", "candidate_labels", "multi_label", "hypothesis_template", "model", "truncation")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_LABELS_FIELD_NUMBER: _ClassVar[int]
    MULTI_LABEL_FIELD_NUMBER: _ClassVar[int]
    HYPOTHESIS_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    candidate_labels: _containers.RepeatedScalarFieldContainer[str]
    multi_label: bool
    hypothesis_template: str
    model: str
    truncation: _common_pb2.Truncation
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., candidate_labels: _Optional[_Iterable[str]] = ..., multi_label: _Optional[bool] = ..., hypothesis_template: _Optional[str] = ..., model: _Optional[str] = ..., truncation: _Optional[_Union[_common_pb2.Truncation, str]] = ...) -> None: ...

class ZeroShotResult(_message.Message):
    __slots__ = ("scores", "truncated")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.LabelScore]
    truncated: bool
    def __init__(self, scores: _Optional[_Iterable[_Union[_common_pb2.LabelScore, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ClassifyZeroShotResponse(_message.Message):
    __slots__ = ("results", "model")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ZeroShotResult]
    model: _common_pb2.ModelRef
    def __init__(self, results: _Optional[_Iterable[_Union[ZeroShotResult, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...
