"""The topic catalog and topic administration."""

from mystocks_gpu.topics.catalog import (
    CATALOG,
    DLQ_SUFFIX,
    TopicSpec,
    all_specs,
    changelog_topic,
    get,
)
from mystocks_gpu.topics.exceptions import TopicDrift, UnknownTopic

__all__ = ["CATALOG", "DLQ_SUFFIX", "TopicDrift", "TopicSpec", "UnknownTopic", "all_specs", "changelog_topic", "get"]
