"""Errors of the topics layer."""

from mystocks_gpu.exceptions import MyStocksError


class UnknownTopic(MyStocksError):
    """A topic name that is not in the catalog."""

    exit_code = 2


class TopicDrift(MyStocksError):
    """An existing topic's partitions or config differ from the catalog."""
