from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_EMOTION: _ClassVar[Task]
    TASK_SENTIMENT: _ClassVar[Task]
    TASK_ZERO_SHOT: _ClassVar[Task]
    TASK_SUMMARIZATION: _ClassVar[Task]
    TASK_CONVERSATION: _ClassVar[Task]
    TASK_EMBEDDING: _ClassVar[Task]

class Truncation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRUNCATION_UNSPECIFIED: _ClassVar[Truncation]
    TRUNCATION_TRUNCATE: _ClassVar[Truncation]
    TRUNCATION_ERROR: _ClassVar[Truncation]

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_FIELD: _ClassVar[ErrorReason]
    ERROR_REASON_INPUT_TOO_LONG: _ClassVar[ErrorReason]
    ERROR_REASON_LIMIT_EXCEEDED: _ClassVar[ErrorReason]
    ERROR_REASON_MODEL_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_MODEL_LOADING: _ClassVar[ErrorReason]
    ERROR_REASON_TASK_UNAVAILABLE: _ClassVar[ErrorReason]
    ERROR_REASON_TASK_DISABLED: _ClassVar[ErrorReason]
    ERROR_REASON_QUEUE_FULL: _ClassVar[ErrorReason]
    ERROR_REASON_DEADLINE_EXPIRED: _ClassVar[ErrorReason]
    ERROR_REASON_SHUTTING_DOWN: _ClassVar[ErrorReason]
    ERROR_REASON_INTERNAL: _ClassVar[ErrorReason]
    ERROR_REASON_MALFORMED_REQUEST: _ClassVar[ErrorReason]
    ERROR_REASON_CALLER_LIMIT: _ClassVar[ErrorReason]
    ERROR_REASON_UNAUTHENTICATED: _ClassVar[ErrorReason]
TASK_UNSPECIFIED: Task
TASK_EMOTION: Task
TASK_SENTIMENT: Task
TASK_ZERO_SHOT: Task
TASK_SUMMARIZATION: Task
TASK_CONVERSATION: Task
TASK_EMBEDDING: Task
TRUNCATION_UNSPECIFIED: Truncation
TRUNCATION_TRUNCATE: Truncation
TRUNCATION_ERROR: Truncation
ERROR_REASON_UNSPECIFIED: ErrorReason
ERROR_REASON_INVALID_FIELD: ErrorReason
ERROR_REASON_INPUT_TOO_LONG: ErrorReason
ERROR_REASON_LIMIT_EXCEEDED: ErrorReason
ERROR_REASON_MODEL_NOT_FOUND: ErrorReason
ERROR_REASON_MODEL_LOADING: ErrorReason
ERROR_REASON_TASK_UNAVAILABLE: ErrorReason
ERROR_REASON_TASK_DISABLED: ErrorReason
ERROR_REASON_QUEUE_FULL: ErrorReason
ERROR_REASON_DEADLINE_EXPIRED: ErrorReason
ERROR_REASON_SHUTTING_DOWN: ErrorReason
ERROR_REASON_INTERNAL: ErrorReason
ERROR_REASON_MALFORMED_REQUEST: ErrorReason
ERROR_REASON_CALLER_LIMIT: ErrorReason
ERROR_REASON_UNAUTHENTICATED: ErrorReason

class ModelRef(_message.Message):
    __slots__ = ("name", "repo_id", "commit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPO_ID_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    repo_id: str
    commit: str
    def __init__(self, name: _Optional[str] = ..., repo_id: _Optional[str] = ..., commit: _Optional[str] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...
