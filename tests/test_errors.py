"""One error tree: every exception class xtream defines descends from :class:`XtreamError`, and
foreign errors are translated at the boundary."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import xtream
from xtream.errors import BatchRefused, ModelError, NumericalError, XtreamError


def _modules():
    for pkg in ("model", "stream", "consumers"):
        package = importlib.import_module(f"xtream.{pkg}")
        for info in pkgutil.walk_packages(package.__path__, prefix=f"xtream.{pkg}."):
            yield importlib.import_module(info.name)


def test_every_exception_class_descends_from_xtream_error():
    strays = sorted(f"{module.__name__}.{name}"
                    for module in _modules()
                    for name, obj in vars(module).items()
                    if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__
                    and not issubclass(obj, XtreamError))
    assert not strays, f"exception classes outside the XtreamError tree: {strays}"
    assert xtream.__name__ == "xtream"


def test_kafka_errors_become_stream_errors_at_the_boundary():
    from kafka.errors import KafkaTimeoutError

    from xtream.stream.errors import SourceUnavailable, map_kafka_errors

    with pytest.raises(SourceUnavailable, match="poll failed: KafkaTimeoutError") as err:
        with map_kafka_errors(SourceUnavailable, "poll failed"):
            raise KafkaTimeoutError("no answer")
    assert isinstance(err.value.__cause__, KafkaTimeoutError)
    with pytest.raises(KeyError):   # not a Kafka error: not ours to translate
        with map_kafka_errors(SourceUnavailable, "poll failed"):
            raise KeyError("x")


def test_the_model_raises_model_errors_only():
    from xtream.model.online import OnlineConfig, OnlineTopicModel

    model = OnlineTopicModel(OnlineConfig(num_topics=2, warmup_docs=4), embedding_dim=3)
    with pytest.raises(BatchRefused):
        model.learn_many([["a"]], np.full((1, 3), np.nan, np.float32), ["en"])
    with pytest.raises(BatchRefused):
        model.learn_many([["a"]], np.ones((1, 4), np.float32), ["en"])
    model.learn_many([["a"], ["b"], ["c"], ["d"]], np.eye(4, 3, dtype=np.float32), ["en"] * 4)
    with pytest.raises(NumericalError):   # torch/numpy's own error, mapped at the entry point
        model.predict_many([["a"]], np.ones((1, 5), np.float32), ["en"])
    assert issubclass(NumericalError, ModelError) and issubclass(ModelError, XtreamError)
