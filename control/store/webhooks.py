"""Webhook receivers and the queue of deliveries to them (docs/operations.md#webhooks).

Each receiver gets its events in order: one node at a time holds a lease on the receiver and
delivers its oldest pending event, then the next; a delivery that fails waits, and the ones after
it with it, until it is retried. Events are written here before anything is sent, so what a node
had queued survives it, and any node takes over a receiver whose lease lapsed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from control.envelope import utc_now
from control.store.schema import webhook_deliveries, webhooks

RECENT_DELIVERIES = 20


@dataclass(frozen=True)
class WebhookRecord:
    id: int
    url: str
    secret: str
    events: list[str]
    description: str
    enabled: bool
    from_settings: bool
    created_at: datetime
    updated_at: datetime

    def wants(self, event_type: str) -> bool:
        return self.enabled and (not self.events or event_type in self.events)

    @classmethod
    def of(cls, row: Any) -> WebhookRecord:
        return cls(
            id=row.id,
            url=row.url,
            secret=row.secret,
            events=list(row.events or []),
            description=row.description,
            enabled=row.enabled,
            from_settings=row.settings_key is not None,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


@dataclass(frozen=True)
class DeliveryRecord:
    id: int
    webhook_id: int
    event_id: str
    event_type: str
    body: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    finished_at: datetime | None
    last_status: int | None
    last_error: str | None

    @classmethod
    def of(cls, row: Any) -> DeliveryRecord:
        return cls(**{column.name: getattr(row, column.name) for column in webhook_deliveries.c})


@dataclass(frozen=True)
class QueuedEvent:
    """An event as it is queued: its id and type, and the document every receiver is sent."""

    event_id: str
    event_type: str
    body: str
    created_at: datetime


def settings_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


class WebhookStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    # receivers ----------------------------------------------------------------------------------

    async def list(self) -> list[WebhookRecord]:
        async with self._engine.connect() as connection:
            rows = await connection.execute(select(webhooks).order_by(webhooks.c.id))
            return [WebhookRecord.of(row) for row in rows]

    async def get(self, webhook_id: int) -> WebhookRecord | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(webhooks).where(webhooks.c.id == webhook_id))).first()
            return WebhookRecord.of(row) if row is not None else None

    async def create(
        self, *, url: str, secret: str, events: list[str], description: str, enabled: bool
    ) -> WebhookRecord:
        now = utc_now()
        async with self._engine.begin() as connection:
            row = (
                await connection.execute(
                    webhooks.insert()
                    .values(
                        url=url,
                        secret=secret,
                        events=events,
                        description=description,
                        enabled=enabled,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(*webhooks.c)
                )
            ).one()
        return WebhookRecord.of(row)

    async def update(self, webhook_id: int, **values: Any) -> WebhookRecord | None:
        async with self._engine.begin() as connection:
            await connection.execute(
                update(webhooks).where(webhooks.c.id == webhook_id).values(updated_at=utc_now(), **values)
            )
        return await self.get(webhook_id)

    async def delete(self, webhook_id: int) -> bool:
        async with self._engine.begin() as connection:
            await connection.execute(delete(webhook_deliveries).where(webhook_deliveries.c.webhook_id == webhook_id))
            deleted = await connection.execute(delete(webhooks).where(webhooks.c.id == webhook_id))
        return deleted.rowcount > 0

    async def sync_settings(self, urls: Sequence[str], secret: str) -> None:
        """Make the receivers configured in settings exactly ``urls``: new ones are added (once,
        however many nodes start together), the secret kept current, removed ones deleted."""
        wanted = {settings_key(url): url for url in urls}
        now = utc_now()
        async with self._engine.begin() as connection:
            rows = (await connection.execute(select(webhooks).where(webhooks.c.settings_key.is_not(None)))).all()
            for row in rows:
                if row.settings_key not in wanted:
                    await connection.execute(
                        delete(webhook_deliveries).where(webhook_deliveries.c.webhook_id == row.id)
                    )
                    await connection.execute(delete(webhooks).where(webhooks.c.id == row.id))
                elif row.secret != secret:
                    await connection.execute(
                        update(webhooks).where(webhooks.c.id == row.id).values(secret=secret, updated_at=now)
                    )
            known = {row.settings_key for row in rows}
        for key, url in wanted.items():
            if key in known:
                continue
            try:
                async with self._engine.begin() as connection:
                    await connection.execute(
                        webhooks.insert().values(
                            url=url,
                            secret=secret,
                            events=[],
                            description="configured in settings",
                            enabled=True,
                            settings_key=key,
                            created_at=now,
                            updated_at=now,
                        )
                    )
            except IntegrityError:
                pass  # another node starting at the same time added it

    # the queue ----------------------------------------------------------------------------------

    async def enqueue(self, events: Iterable[QueuedEvent]) -> int:
        """One pending delivery per event for every enabled receiver that wants its type, in the
        order given; how many were queued."""
        rows = []
        async with self._engine.begin() as connection:
            receivers = [WebhookRecord.of(row) for row in await connection.execute(select(webhooks))]
            for event in events:
                for receiver in receivers:
                    if receiver.wants(event.event_type):
                        rows.append(
                            {
                                "webhook_id": receiver.id,
                                "event_id": event.event_id,
                                "event_type": event.event_type,
                                "body": event.body,
                                "status": "pending",
                                "attempts": 0,
                                "created_at": event.created_at,
                                "next_attempt_at": event.created_at,
                            }
                        )
            if rows:
                await connection.execute(webhook_deliveries.insert(), rows)
        return len(rows)

    async def due(self, now: datetime) -> list[int]:
        """Receivers with a delivery due and no live lease held by another node."""
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(webhook_deliveries.c.webhook_id)
                .where(webhook_deliveries.c.status == "pending", webhook_deliveries.c.next_attempt_at <= now)
                .group_by(webhook_deliveries.c.webhook_id)
            )
            return [row[0] for row in rows]

    async def take_lease(self, webhook_id: int, node_id: str, until: datetime) -> bool:
        """Hold (or renew) the right to deliver to the receiver; False while another node holds it."""
        now = utc_now()
        async with self._engine.begin() as connection:
            taken = await connection.execute(
                update(webhooks)
                .where(
                    webhooks.c.id == webhook_id,
                    or_(
                        webhooks.c.lease_node.is_(None),
                        webhooks.c.lease_node == node_id,
                        webhooks.c.lease_until < now,
                    ),
                )
                .values(lease_node=node_id, lease_until=until)
            )
        return taken.rowcount > 0

    async def release_lease(self, webhook_id: int, node_id: str) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                update(webhooks)
                .where(webhooks.c.id == webhook_id, webhooks.c.lease_node == node_id)
                .values(lease_node=None, lease_until=None)
            )

    async def head(self, webhook_id: int) -> tuple[WebhookRecord, DeliveryRecord] | None:
        """The receiver and its oldest pending delivery, if it has one (and still exists)."""
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    select(webhook_deliveries)
                    .where(webhook_deliveries.c.webhook_id == webhook_id, webhook_deliveries.c.status == "pending")
                    .order_by(webhook_deliveries.c.id)
                    .limit(1)
                )
            ).first()
            receiver = (await connection.execute(select(webhooks).where(webhooks.c.id == webhook_id))).first()
        if row is None or receiver is None:
            return None
        return WebhookRecord.of(receiver), DeliveryRecord.of(row)

    async def delivered(self, delivery_id: int, status: int) -> None:
        await self._finish(delivery_id, "delivered", last_status=status, last_error=None)

    async def dropped(self, delivery_id: int, status: int | None, error: str) -> None:
        await self._finish(delivery_id, "dropped", last_status=status, last_error=error[:500])

    async def retry_at(self, delivery_id: int, when: datetime, status: int | None, error: str) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery_id)
                .values(
                    attempts=webhook_deliveries.c.attempts + 1,
                    next_attempt_at=when,
                    last_status=status,
                    last_error=error[:500],
                )
            )

    async def _finish(self, delivery_id: int, outcome: str, **values: Any) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery_id, webhook_deliveries.c.status == "pending")
                .values(status=outcome, attempts=webhook_deliveries.c.attempts + 1, finished_at=utc_now(), **values)
            )

    async def pending_count(self, webhook_id: int | None = None) -> int:
        condition = webhook_deliveries.c.status == "pending"
        if webhook_id is not None:
            condition = and_(condition, webhook_deliveries.c.webhook_id == webhook_id)
        async with self._engine.connect() as connection:
            return int((await connection.execute(select(func.count()).where(condition))).scalar_one())

    async def recent(self, webhook_id: int, limit: int = RECENT_DELIVERIES) -> list[DeliveryRecord]:
        """The receiver's latest deliveries, newest first."""
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(webhook_deliveries)
                .where(webhook_deliveries.c.webhook_id == webhook_id)
                .order_by(webhook_deliveries.c.id.desc())
                .limit(limit)
            )
            return [DeliveryRecord.of(row) for row in rows]

    async def prune(self, finished_before: datetime) -> int:
        """Forget deliveries that ended (delivered or dropped) before the given moment."""
        async with self._engine.begin() as connection:
            removed = await connection.execute(
                delete(webhook_deliveries).where(
                    webhook_deliveries.c.status != "pending", webhook_deliveries.c.finished_at < finished_before
                )
            )
        return removed.rowcount
