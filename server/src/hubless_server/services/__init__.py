"""gRPC servicers, one module per ``hubless.v1`` service, and :data:`SERVICERS`, the servicer
class of every task of the task table (``tests/test_tasks_agree.py`` checks they agree)."""

from __future__ import annotations

from hubless_server.services.common import TaskServicer
from hubless_server.services.conversation import ConversationService
from hubless_server.services.embeddings import EmbeddingsService
from hubless_server.services.emotion import EmotionService
from hubless_server.services.sentiment import SentimentService
from hubless_server.services.summarization import SummarizationService
from hubless_server.services.zero_shot import ZeroShotService

SERVICERS: dict[str, type[TaskServicer]] = {
    cls.task: cls
    for cls in (
        EmotionService,
        SentimentService,
        ZeroShotService,
        SummarizationService,
        ConversationService,
        EmbeddingsService,
    )
}
"""Task name -> the servicer class of its ``hubless.v1`` service."""
