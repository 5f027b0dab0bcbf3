"""Retrying transient failures (tenacity): exponential backoff with jitter, each attempt
bounded, never giving up on infrastructure; what to do while waiting is passed in."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never
from tenacity.wait import wait_random_exponential

from consumer.config import Settings
from consumer.errors import BrokerUnavailable, StoreUnavailable
from consumer.kafka import as_consumer_error

__all__ = ["Cause", "Retrier", "is_retriable"]

log = structlog.get_logger("consumer.retrier")

Cause = Literal["store", "broker"]
T = TypeVar("T")


def is_retriable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retriable", False))


class Retrier:
    """Calls a step until it succeeds or fails for a reason retrying cannot fix.

    `on_retry(cause, error)` runs before each wait (the worker pauses fetching, turns
    readiness false and counts the retry); `on_recovered()` after a call that had to wait.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_retry: Callable[[Cause, BaseException], None],
        on_recovered: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._on_retry = on_retry
        self._on_recovered = on_recovered

    async def call(
        self, cause: Cause, step: Callable[[], Awaitable[T]], *, bounded: bool = True
    ) -> T:
        """`step()` until it succeeds. With `bounded`, each attempt may take at most
        RETRY_ATTEMPT_TIMEOUT_S; a step that must not be cancelled midway (a Kafka commit,
        which would leave its outcome unknown) bounds its own waits instead."""
        waited = False

        def before_sleep(state: RetryCallState) -> None:
            nonlocal waited
            waited = True
            error = state.outcome.exception() if state.outcome else None
            assert error is not None
            self._on_retry(cause, error)
            log.warning(f"{cause}.retry", attempt=state.attempt_number, error=str(error))

        retrying = AsyncRetrying(
            retry=retry_if_exception(is_retriable),
            wait=wait_random_exponential(
                multiplier=self._settings.retry_initial_s, max=self._settings.retry_max_s
            ),
            stop=stop_never,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(cause, step, bounded)
        finally:
            if waited:
                self._on_recovered()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, cause: Cause, step: Callable[[], Awaitable[T]], bounded: bool) -> T:
        try:
            if not bounded:
                return await step()
            async with asyncio.timeout(self._settings.retry_attempt_timeout_s):
                return await step()
        except TimeoutError:
            if cause == "store":
                raise StoreUnavailable("the database did not answer in time") from None
            raise BrokerUnavailable("Kafka did not answer in time") from None
        except Exception as exc:
            if cause == "store":
                raise  # the stores translate their own drivers' errors
            translated = as_consumer_error(exc)
            if translated is exc:
                raise
            raise translated from exc
