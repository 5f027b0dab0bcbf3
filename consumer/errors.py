"""The project's errors: each says whether retrying can help."""

from __future__ import annotations


class ConsumerError(Exception):
    """Base error. `retriable` tells the worker whether to retry (infrastructure) or not."""

    retriable: bool = False


class ConfigurationError(ConsumerError):
    """A setting is missing or wrong; the message names the variable and the fix."""


class StoreError(ConsumerError):
    """The database refused an operation for a reason that retrying cannot fix."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or timed out; retry with backoff."""

    retriable = True


class StoreConflict(StoreUnavailable):
    """Concurrent transactions collided (deadlock, serialization failure); retry the batch."""


class SchemaOutOfDate(StoreError):
    """The database schema is older than the code; migrations must run first."""


class BrokerUnavailable(ConsumerError):
    """The Kafka broker cannot be reached or timed out; retry with backoff."""

    retriable = True


class Fenced(ConsumerError):
    """Another replica now owns the partition; this one must drop its batch, not retry it."""


class EpochEnded(Fenced):
    """The batch's ownership epoch ended (a rebalance) before it touched the store or Kafka."""


class RecordError(ConsumerError):
    """Processing one record failed for a reason that is not infrastructure."""


class BatchRefused(RecordError):
    """Kafka refused a batch's outputs for good (too large, not allowed, malformed), or they
    could not be built: some record of the batch is at fault. The batch is bisected."""
