"""Isolating what the store or Kafka refuses: bisect the batch, retry a lone record, then
dead-letter it without leaving half of its effects behind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from consumer.committer import Committer
from consumer.config import Settings
from consumer.deadletter import ReasonClass
from consumer.errors import (
    BatchRefused,
    ConfigurationError,
    ConsumerError,
    Fenced,
    SchemaOutOfDate,
)
from consumer.planning import Plan, Step, dead_letter_output
from consumer.retrier import Retrier
from consumer.store.base import SourceOffset, Store

__all__ = ["Isolation"]

log = structlog.get_logger("consumer.isolation")

Apply = Callable[[Plan], Awaitable[None]]


def _refusal(exc: BaseException) -> bool:
    """A failure that may be the batch's content: not the infrastructure (retried before it
    gets here), not the ownership, not a setting. A bug on one record's path is one too:
    it must cost that record, not stop its partition."""
    return not getattr(exc, "retriable", False) and not isinstance(
        exc, Fenced | ConfigurationError | SchemaOutOfDate
    )


class Isolation:
    """Runs a plan; when it is refused, finds the records at fault by halving it.

    k refused records in a batch of n cost on the order of k·log2(n) attempts instead of n:
    each half that goes through is committed as it is; each half that is refused is halved
    again, in order, so every partition's offsets still advance in order. A lone record that
    keeps being refused is dead-lettered as `persistent` after MAX_RECORD_ATTEMPTS. If its
    ledger entry was applied before Kafka refused it, the store first records that its
    notification is owed (see Store.mark_owed); its replay then emits it exactly once.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        committer: Committer,
        retrier: Retrier,
        apply: Apply,
        on_committed: Callable[[Plan], None],
    ) -> None:
        self._settings = settings
        self._store = store
        self._committer = committer
        self._retrier = retrier
        self._apply = apply
        self._on_committed = on_committed

    async def process(self, plan: Plan) -> list[Plan]:
        """Apply and commit `plan`; the pieces committed, in order: `[plan]` when it went
        through whole. Raises what is not a refusal (Fenced, configuration errors)."""
        committed: list[Plan] = []
        try:
            await self._commit(plan, committed)
        except Exception as exc:
            if not _refusal(exc):
                raise
            log.warning("batch.isolating", error=str(exc), records=len(plan))
            await self._bisect(plan, exc, committed)
        return committed

    async def _commit(self, plan: Plan, committed: list[Plan]) -> None:
        await self._apply(plan)
        self._on_committed(plan)
        committed.append(plan)

    async def _bisect(self, plan: Plan, error: BaseException, committed: list[Plan]) -> None:
        if len(plan) == 1:
            await self._alone(plan, error, committed)
            return
        for half in plan.split():
            try:
                await self._commit(half, committed)
            except Exception as exc:
                if not _refusal(exc):
                    raise
                await self._bisect(half, exc, committed)

    async def _alone(self, plan: Plan, error: BaseException, committed: list[Plan]) -> None:
        """One record, refused once already: retry it, then dead-letter it."""
        step = plan.steps[0]
        attempts = 1
        if step.dead_letter is None:  # an invalid record's dead letter is all it has to send
            while attempts < self._settings.max_record_attempts:
                attempts += 1
                try:
                    await self._commit(plan, committed)
                except Exception as exc:
                    if not _refusal(exc):
                        raise
                    error = exc
                    continue
                return
        record = step.record
        log.warning(
            "record.failing",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            attempts=attempts,
            error=str(error),
        )
        await self._owe_notification(plan)
        committed.append(await self._dead_letter(plan, step, error, attempts))

    async def _owe_notification(self, plan: Plan) -> None:
        """The ledger applied the record but Kafka refused its notification: say it is owed."""
        result = plan.stored
        if result is None or not any(outcome.notifies for outcome in result.outcomes):
            return  # refused by the store itself: nothing of it is there
        record = plan.steps[0].record
        entry = result.outcomes[0].entry
        source = SourceOffset(record.topic, record.partition, record.offset)
        marked = await self._retrier.call(
            "store", lambda: self._store.mark_owed([(entry.transaction_id, source)])
        )
        log.warning(
            "notification.owed",
            transaction_id=entry.transaction_id,
            partition=record.partition,
            offset=record.offset,
            marked=bool(marked),
        )

    async def _dead_letter(
        self, plan: Plan, step: Step, error: BaseException, attempts: int
    ) -> Plan:
        record = step.record
        invalid = step.dead_letter is not None
        reasons = step.reasons if invalid else [f"{type(error).__name__}: {error}"]
        reason_class: ReasonClass = "invalid" if invalid else "persistent"
        topic = self._settings.dead_letter_topic
        refused: BaseException = error
        for bounded in (False, True) if not invalid else (True,):
            letter = dead_letter_output(
                record, reasons, reason_class, attempts, topic, bounded=bounded
            )
            single = Plan(
                plan.epoch,
                [
                    Step(
                        record,
                        dead_letter=letter,
                        reasons=reasons,
                        reason_class=reason_class,
                        span=step.span,
                    )
                ],
            )
            try:
                await self._committer.commit(single, [letter])
            except BatchRefused as exc:
                refused = exc
                continue
            if bounded:
                log.warning(
                    "dead_letter.bounded",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    size=len(record.value or b""),
                    refused=str(refused),
                )
            single.counts[f"dead_lettered_{reason_class}"] = 1
            self._on_committed(single)
            return single
        raise ConsumerError(
            f"Kafka refused even the bounded dead letter of {record.topic}[{record.partition}]"
            f"@{record.offset} on {topic} ({refused}); check that this replica may write to "
            "DEAD_LETTER_TOPIC and that the topic exists"
        )
