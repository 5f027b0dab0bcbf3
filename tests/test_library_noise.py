"""What the libraries say reaches the operator at the level it means for them.

The fencing tests rely on aiokafka's internals (consumer.kafka.ignore_fenced_producer_futures
says which): the first one fails if aiokafka stops leaving those futures behind, and the
handler can then go.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, ProducerFenced

from consumer.kafka import ignore_fenced_producer_futures
from consumer.logs import LibraryLevels
from tests.conftest import TopicFactory


@dataclass(frozen=True)
class Report:
    levelno: int
    message: str

    def getMessage(self) -> str:  # the name LogRecord gives it
        return self.message


class _Collected(logging.Handler):
    """Keeps level and text only: a record's exception holds aiokafka's frames (and their
    connections) alive past the test that made them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[Report] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(Report(record.levelno, record.getMessage()))


@pytest.fixture
def asyncio_reports() -> Iterator[list[Report]]:
    """What asyncio's default exception handler logs meanwhile."""
    collected = _Collected()
    logger = logging.getLogger("asyncio")
    logger.addHandler(collected)
    try:
        yield collected.records
    finally:
        logger.removeHandler(collected)


async def _fence_a_producer_mid_transaction(bootstrap: str, topic: str) -> None:
    """A producer in a transaction is fenced by a newer one with its id, then sends."""
    transactional_id = f"noise-{uuid.uuid4().hex[:8]}"
    zombie = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id)
    await zombie.start()
    newer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id)
    try:
        await zombie.begin_transaction()
        await newer.start()  # init_transactions: the zombie's epoch is over
        with pytest.raises(ProducerFenced):
            await (await zombie.send(topic, b"late"))
    finally:
        await zombie.stop()
        await newer.stop()


def _fenced_in_a_fresh_loop(bootstrap: str, topic: str, *, handled: bool) -> None:
    async def scenario() -> None:
        if handled:
            ignore_fenced_producer_futures(asyncio.get_running_loop())
        await _fence_a_producer_mid_transaction(bootstrap, topic)
        gc.collect()  # the leftover futures are reported when collected

    asyncio.run(scenario())
    gc.collect()


def _never_retrieved_fenced(records: list[Report]) -> list[Report]:
    return [
        r
        for r in records
        if "never retrieved" in r.getMessage() and "ProducerFenced" in r.getMessage()
    ]


async def test_a_fenced_producer_leaves_futures_asyncio_reports_as_errors(
    kafka_bootstrap: str, new_topic: TopicFactory, asyncio_reports: list[Report]
) -> None:
    topic = await new_topic("noise")

    # A loop of its own (in a thread), so the session loop's handler is left alone.
    await asyncio.to_thread(_fenced_in_a_fresh_loop, kafka_bootstrap, topic, handled=False)

    reported = _never_retrieved_fenced(asyncio_reports)
    assert reported, "aiokafka no longer leaves fenced futures: the handler can go"
    assert {r.levelno for r in reported} == {logging.ERROR}


async def test_the_handler_drops_those_reports_and_nothing_else(
    kafka_bootstrap: str, new_topic: TopicFactory, asyncio_reports: list[Report]
) -> None:
    topic = await new_topic("noise")

    await asyncio.to_thread(_fenced_in_a_fresh_loop, kafka_bootstrap, topic, handled=True)

    assert _never_retrieved_fenced(asyncio_reports) == []


def test_other_unretrieved_exceptions_are_still_reported(
    asyncio_reports: list[Report],
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ignore_fenced_producer_futures(loop)
        other = loop.create_future()
        other.set_exception(RuntimeError("a bug of ours"))

        async def fenced_task() -> None:
            raise ProducerFenced

        task = asyncio.ensure_future(fenced_task())
        await asyncio.wait([task])
        del other, task
        gc.collect()

    asyncio.run(scenario())
    gc.collect()

    messages = [r.getMessage() for r in asyncio_reports if r.levelno == logging.ERROR]
    assert any("never retrieved" in m and "a bug of ours" in m for m in messages), messages
    assert any("Task exception was never retrieved" in m for m in messages), messages


def _record(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


@pytest.mark.parametrize(
    ("record", "level"),
    [
        (
            _record(
                "aiokafka.consumer.group_coordinator",
                logging.ERROR,
                "Group Coordinator Request failed: %s",
                KafkaConnectionError(),  # retriable: aiokafka looks again
            ),
            logging.INFO,
        ),
        (
            _record(
                "aiokafka.consumer.group_coordinator",
                logging.ERROR,
                "Group Coordinator Request failed: %s",
                ProducerFenced(),  # not retriable: aiokafka raises it to us
            ),
            logging.WARNING,
        ),
        (
            _record("aiokafka", logging.ERROR, 'Unable connect to "%s:%s": %s', "h", 1, "no"),
            logging.WARNING,
        ),
        (_record("asyncpg.pool", logging.ERROR, "connection lost"), logging.WARNING),
        (_record("aiokafka", logging.WARNING, "Heartbeat failed"), logging.WARNING),
        (_record("aiohttp.server", logging.ERROR, "Error handling request"), logging.ERROR),
        (_record("asyncio", logging.ERROR, "Task was destroyed but it is pending"), logging.ERROR),
    ],
    ids=["lookup", "lookup-fatal", "connect", "asyncpg", "warning", "aiohttp", "asyncio"],
)
def test_library_records_get_the_level_they_mean_to_an_operator(
    record: logging.LogRecord, level: int
) -> None:
    LibraryLevels(logging.DEBUG).filter(record)

    assert record.levelno == level
    assert record.levelname == logging.getLevelName(level)


def test_an_unexpected_library_error_with_its_exception_stays_an_error() -> None:
    try:
        raise ValueError("bug")
    except ValueError:
        record = logging.LogRecord(
            "aiokafka.producer.sender",
            logging.ERROR,
            __file__,
            1,
            "Unexpected error in sender routine",
            None,
            exc_info=sys.exc_info(),
        )

    LibraryLevels(logging.DEBUG).filter(record)

    assert record.levelno == logging.ERROR


def test_the_threshold_applies_to_the_new_level() -> None:
    quiet = LibraryLevels(logging.ERROR)

    connect = _record("aiokafka", logging.ERROR, 'Unable connect to "%s:%s": %s', "h", 1, "no")
    assert not quiet.filter(connect)  # lowered to a warning, then below the threshold
    assert quiet.filter(_record("asyncio", logging.ERROR, "Task was destroyed"))
