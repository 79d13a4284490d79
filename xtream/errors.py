"""The root of every error xtream raises, and the second-level bases its packages raise under.

Third-party errors are translated where they enter: kafka-python's in ``xtream.stream``
(:func:`xtream.stream.errors.map_kafka_errors`), torch's and numpy's numerical failures at the
model's learn, predict and train entry points (:func:`map_numerical_errors`, used by
:mod:`xtream.model.online`). A caller that means
"the model could not take this batch" catches :class:`ModelError`; one that means "the broker did
not answer" catches :class:`~xtream.stream.errors.SourceUnavailable`; neither catches the other.

Leaf classes live beside the code that raises them and keep the built-in base older callers
caught them by (``ValueError`` for refused input, ``RuntimeError`` for failures)::

    XtreamError
    ├── ModelError                          xtream.errors: the model could not learn or serve
    │   ├── BatchRefused (ValueError)       xtream.errors: input refused before any state changed
    │   ├── NumericalError                  xtream.errors: torch/numpy failed (non-finite loss, bad shapes)
    │   ├── MaintenanceFailed               xtream.model.online: batch learned, network work deferred
    │   ├── IncompatibleModel (ValueError)  xtream.model.persistence: saved by another format
    │   ├── QualityError (ValueError)       xtream.model.quality: inconsistent evaluation inputs
    │   └── EmbedderProcessError            xtream.model.embedding_process: the embedder child failed
    ├── XtreamStreamError                   xtream.stream.errors: Kafka and files
    │   ├── SourceUnavailable               the broker cannot be reached (retry; report not-ready)
    │   ├── SinkError                       a publish did not reach the broker in time
    │   │   ├── RecordTooLarge              over the output topic's size limit: never deliverable
    │   │   └── TransactionFailed           an output transaction did not commit: its outputs are void
    │   └── KafkaSetupError                 xtream.stream.kafka_broker: the local broker did not start
    ├── InvalidRecord (ValueError)          xtream.stream.schemas: a record that is not a document
    ├── CheckpointError                     xtream.consumers.checkpoint: the service's state on disk
    │   ├── IncompatibleCheckpoint          written with another model/config
    │   ├── DataDirectoryLocked             another process holds the directory
    │   ├── CheckpointsUnreadable           checkpoints exist but none verifies
    │   └── CheckpointWriteError            a save failed (e.g. no space left)
    └── Busy                                xtream.consumers.ratelimit: an API request refused for now
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["NUMERICAL_ERRORS", "BatchRefused", "ModelError", "NumericalError", "XtreamError", "map_numerical_errors"]


class XtreamError(Exception):
    """Root of xtream's errors."""


class ModelError(XtreamError):
    """The model could not learn, assign or train."""


class BatchRefused(ModelError, ValueError):
    """The model refused a batch before changing any state (shapes, languages, non-finite values)."""


class NumericalError(ModelError, RuntimeError):
    """A numerical step failed: torch raised, or a loss or an input came out non-finite."""


#: What torch and numpy raise when a computation fails.
NUMERICAL_ERRORS = (RuntimeError, ValueError, FloatingPointError)


@contextmanager
def map_numerical_errors(what: str) -> Iterator[None]:
    """Re-raise a torch or numpy failure inside the block as :class:`NumericalError`; errors
    already in the tree pass through."""
    try:
        yield
    except XtreamError:
        raise
    except NUMERICAL_ERRORS as exc:
        raise NumericalError(f"{what}: {exc!r}") from exc
