"""Getting events to webhook receivers without holding anything else up.

``emit`` only appends the event to an in-memory queue and returns: the request (or media event)
that caused it never waits for the database, let alone a receiver. A writer task moves queued
events into the delivery table in the order they were emitted. A dispatcher task finds receivers
with deliveries due, takes each one's lease and runs a worker per receiver, which sends that
receiver's deliveries one after the other, oldest first: a receiver that is down or slow holds up
its own queue only. A failed attempt is retried after ``retry_base_seconds``, doubling up to
``retry_max_seconds``, until ``retry_for_seconds`` after the event, then dropped. Delivery is at
least once: a receiver dedupes by the event id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from ai.fetch import CheckedResolver, UrlRefused, check_url, parse_networks
from config.settings import WebhookSettings
from control.envelope import utc_now
from control.metrics.instruments import Metrics
from control.store.webhooks import DeliveryRecord, QueuedEvent, WebhookRecord, WebhookStore
from control.webhooks.events import make_event
from control.webhooks.signing import HEADER, signature_header

log = logging.getLogger("huiyi.webhooks")

QUEUE_LIMIT = 10_000  # events emitted and not yet written; past it the newest are dropped (logged)
BATCH = 500
POLL_SECONDS = 1.0  # how often due deliveries are looked for besides when events are written
PRUNE_SECONDS = 600.0
CLOSE_FLUSH_SECONDS = 5.0
URL_NAME = "the webhook URL"


class Webhooks:
    def __init__(self, store: WebhookStore, settings: WebhookSettings, node_id: str, metrics: Metrics) -> None:
        self.store = store
        self.settings = settings
        self.node_id = node_id
        self.metrics = metrics
        self.allowed = parse_networks(settings.url_allow_networks)
        self.lease_seconds = max(30.0, settings.timeout_seconds * 3)
        self._queue: asyncio.Queue[QueuedEvent] = asyncio.Queue(QUEUE_LIMIT)
        self._wake = asyncio.Event()
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    # emitting -----------------------------------------------------------------------------------

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        """Queue an event for every receiver that wants it; returns at once."""
        try:
            self._queue.put_nowait(make_event(event_type, data, self.node_id))
        except asyncio.QueueFull:
            log.warning("webhook queue full (%d events not yet written); %s dropped", QUEUE_LIMIT, event_type)

    # lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.sync_settings(self.settings.urls, self.settings.secret)
        connector = aiohttp.TCPConnector(resolver=CheckedResolver(self.allowed, URL_NAME), use_dns_cache=False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
            trust_env=False,
        )
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._write()), loop.create_task(self._dispatch())]

    async def close(self) -> None:
        """Events emitted so far are written (for a little while) so that another node, or this
        one starting again, delivers them; deliveries in flight are abandoned and will be retried."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), CLOSE_FLUSH_SECONDS)
        tasks = [*self._tasks, *self._workers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # writing ------------------------------------------------------------------------------------

    async def _write(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < BATCH:
                batch.append(self._queue.get_nowait())
            pause = 0.5
            while True:
                try:
                    await self.store.enqueue(batch)
                    break
                except Exception as exc:
                    # Held, in order, until the database answers again.
                    log.warning("cannot queue %d webhook events (%s); trying again", len(batch), type(exc).__name__)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 30.0)
            for _ in batch:
                self._queue.task_done()
            self._wake.set()

    # dispatching --------------------------------------------------------------------------------

    def _lease_until(self) -> datetime:
        return utc_now() + timedelta(seconds=self.lease_seconds)

    async def _dispatch(self) -> None:
        pruned = time.monotonic()
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that lands as the event is set, and this loop would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            try:
                for webhook_id in await self.store.due(utc_now()):
                    if webhook_id in self._workers:
                        continue
                    if await self.store.take_lease(webhook_id, self.node_id, self._lease_until()):
                        task = asyncio.get_running_loop().create_task(self._deliver_all(webhook_id))
                        self._workers[webhook_id] = task
                if time.monotonic() - pruned > PRUNE_SECONDS:
                    pruned = time.monotonic()
                    await self.store.prune(utc_now() - timedelta(seconds=self.settings.keep_seconds))
            except Exception as exc:
                log.warning("looking for webhook deliveries failed (%s); trying again", type(exc).__name__)

    async def _deliver_all(self, webhook_id: int) -> None:
        """One receiver's deliveries, oldest first, while this node holds its lease."""
        try:
            while True:
                found = await self.store.head(webhook_id)
                if found is None:
                    return
                receiver, delivery = found
                if not await self._wait_for(webhook_id, delivery.next_attempt_at):
                    return
                await self._attempt(receiver, delivery)
                if not await self.store.take_lease(webhook_id, self.node_id, self._lease_until()):
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivering to webhook %s failed; trying again later", webhook_id)
        finally:
            self._workers.pop(webhook_id, None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.release_lease(webhook_id, self.node_id), 2.0)

    async def _wait_for(self, webhook_id: int, moment: datetime) -> bool:
        """Sleep until a retry is due, keeping the lease; False if another node took it."""
        while (wait := (moment - utc_now()).total_seconds()) > 0:
            await asyncio.sleep(min(wait, self.lease_seconds / 3))
            if not await self.store.take_lease(webhook_id, self.node_id, self._lease_until()):
                return False
        return True

    async def _attempt(self, receiver: WebhookRecord, delivery: DeliveryRecord) -> None:
        assert self._session is not None
        body = delivery.body.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "huiyi-webhooks",
            "Huiyi-Event": delivery.event_type,
            "Huiyi-Event-Id": delivery.event_id,
            "Huiyi-Delivery": str(delivery.id),
            HEADER: signature_header(receiver.secret, body),
        }
        status: int | None = None
        started = time.perf_counter()
        try:
            check_url(receiver.url, self.allowed, URL_NAME)
            async with self._session.post(receiver.url, data=body, headers=headers, allow_redirects=False) as answer:
                status = answer.status
            error = "" if 200 <= status < 300 else f"the receiver answered HTTP {status}"
        except UrlRefused as exc:
            error = str(exc)
        except TimeoutError:
            error = f"no answer within {self.settings.timeout_seconds:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.metrics.webhook_seconds.observe(time.perf_counter() - started)
        if not error:
            await self.store.delivered(delivery.id, status or 0)
            self.metrics.webhook_deliveries.labels("delivered").inc()
            return
        now = utc_now()
        if (now - delivery.created_at).total_seconds() >= self.settings.retry_for_seconds:
            await self.store.dropped(delivery.id, status, error)
            self.metrics.webhook_deliveries.labels("dropped").inc()
            log.warning(
                "webhook %s: dropped %s %s after %d attempts: %s",
                receiver.id,
                delivery.event_type,
                delivery.event_id,
                delivery.attempts + 1,
                error,
            )
            return
        doubling = 2 ** min(delivery.attempts, 30)
        backoff = min(self.settings.retry_base_seconds * doubling, self.settings.retry_max_seconds)
        await self.store.retry_at(delivery.id, now + timedelta(seconds=backoff), status, error)
        self.metrics.webhook_deliveries.labels("failed").inc()
        log.info("webhook %s: %s not delivered (%s); again in %.0f s", receiver.id, delivery.event_type, error, backoff)
