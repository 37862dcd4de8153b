"""/api/v1/admin/webhooks: the receivers of event notifications, for the admin role only
(behaviour: docs/operations.md#webhooks). A receiver's signing secret is shown when it is made and
when it is replaced, never otherwise; those configured in settings are listed, not changed here."""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Literal

from aiohttp import web
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from ai.fetch import UrlRefused, parse_networks, precheck
from control.api.schemas import RequestModel
from control.context import SETTINGS, STORE, current_user
from control.endpoints import Access, EndpointGroup, path_int
from control.envelope import iso_utc
from control.errors import bad_request, not_found
from control.store.webhooks import DeliveryRecord, WebhookRecord
from control.webhooks.events import EVENT_TYPES

log = logging.getLogger("huiyi.admin")
group = EndpointGroup("/api/v1/admin/webhooks", "webhooks")
WEBHOOK_ID = r"{webhook_id:\d+}"
RESOLVE_SECONDS = 5.0

EventType = Literal[
    "meeting.started",
    "meeting.ended",
    "participant.joined",
    "participant.left",
    "track.published",
    "track.unpublished",
    "recording.ready",
    "stream.state_changed",
]
assert set(EventType.__args__) == set(EVENT_TYPES)  # type: ignore[attr-defined]


def _no_controls(value: str) -> str:
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError("must not contain control characters")
    return value


Url = Annotated[str, StringConstraints(min_length=8, max_length=2048), AfterValidator(_no_controls)]
Secret = Annotated[str, StringConstraints(min_length=16, max_length=256), AfterValidator(_no_controls)]
Description = Annotated[str, StringConstraints(max_length=200), AfterValidator(_no_controls)]


class WebhookIn(RequestModel):
    url: Url = Field(description="http or https; never a loopback, private or link-local address")
    events: list[EventType] = Field(default_factory=list, max_length=len(EVENT_TYPES), description="empty: all")
    description: Description = ""
    enabled: bool = True
    secret: Secret | None = Field(None, description="the signing secret; omitted: one is generated")


class WebhookUpdate(RequestModel):
    url: Url | None = None
    events: list[EventType] | None = Field(None, max_length=len(EVENT_TYPES))
    description: Description | None = None
    enabled: bool | None = None
    rotate_secret: bool = Field(False, description="replace the signing secret with a new one, answered once")


class DeliveryOut(BaseModel):
    delivery_id: int
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "dropped"]
    attempts: int
    created_at: str
    next_attempt_at: str | None
    finished_at: str | None
    last_status: int | None
    last_error: str | None

    @classmethod
    def of(cls, record: DeliveryRecord) -> DeliveryOut:
        return cls(
            delivery_id=record.id,
            event_id=record.event_id,
            event_type=record.event_type,
            status=record.status,  # type: ignore[arg-type]
            attempts=record.attempts,
            created_at=iso_utc(record.created_at),
            next_attempt_at=iso_utc(record.next_attempt_at) if record.status == "pending" else None,
            finished_at=iso_utc(record.finished_at) if record.finished_at else None,
            last_status=record.last_status,
            last_error=record.last_error,
        )


class WebhookOut(BaseModel):
    webhook_id: int
    url: str
    events: list[str] = Field(description="the event types delivered; empty: all")
    description: str
    enabled: bool
    source: Literal["api", "settings"]
    created_at: str
    updated_at: str
    secret: str | None = Field(None, description="only when the secret was just made or replaced")

    @classmethod
    def of(cls, record: WebhookRecord, secret: str | None = None) -> WebhookOut:
        return cls(
            webhook_id=record.id,
            url=record.url,
            events=record.events,
            description=record.description,
            enabled=record.enabled,
            source="settings" if record.from_settings else "api",
            created_at=iso_utc(record.created_at),
            updated_at=iso_utc(record.updated_at),
            secret=secret,
        )


class WebhookDetail(WebhookOut):
    pending: int = Field(description="deliveries waiting to be made")
    deliveries: list[DeliveryOut] = Field(description="the latest deliveries, newest first")


def webhook_not_found() -> Exception:
    return not_found("Webhook not found")


async def _target(request: web.Request, *, changing: bool = False) -> WebhookRecord:
    record = await request.app[STORE].webhooks.get(path_int(request, "webhook_id", webhook_not_found()))
    if record is None:
        raise webhook_not_found()
    if changing and record.from_settings:
        raise bad_request("This webhook is configured in the server's settings ([webhooks] urls); change it there")
    return record


async def _checked(request: web.Request, url: str) -> str:
    """The URL, if the server may send to it (the rules of audio_url; docs/operations.md#webhooks)."""
    allowed = parse_networks(request.app[SETTINGS].webhooks.url_allow_networks)
    try:
        await precheck(url, allowed, RESOLVE_SECONDS, "url")
    except UrlRefused as exc:
        error = {"field": "url", "message": str(exc), "type": "url_refused"}
        raise bad_request(str(exc), {"errors": [error]}) from None
    return url


@group.route(
    "GET",
    "",
    name="list",
    summary="List webhook receivers (those registered here and those configured in settings)",
    access=Access.ADMIN,
    limit="50/minute",
    response=list[WebhookOut],
    errors=(403,),
)
async def list_webhooks(request: web.Request) -> list[WebhookOut]:
    return [WebhookOut.of(record) for record in await request.app[STORE].webhooks.list()]


@group.route(
    "POST",
    "",
    name="create",
    summary="Register a webhook receiver; the answer holds its signing secret, shown this once",
    access=Access.ADMIN,
    limit="20/minute",
    body=WebhookIn,
    response=WebhookOut,
    status=201,
    errors=(400, 403),
)
async def create_webhook(request: web.Request, body: WebhookIn) -> WebhookOut:
    url = await _checked(request, body.url)
    secret = body.secret or "whsec_" + secrets.token_urlsafe(32)
    record = await request.app[STORE].webhooks.create(
        url=url, secret=secret, events=sorted(set(body.events)), description=body.description, enabled=body.enabled
    )
    log.info("admin %s registered webhook %s", current_user(request).id, record.id)
    return WebhookOut.of(record, secret)


@group.route(
    "GET",
    "/" + WEBHOOK_ID,
    name="get",
    summary="A webhook receiver with its latest deliveries",
    access=Access.ADMIN,
    limit="100/minute",
    response=WebhookDetail,
    errors=(403, 404),
)
async def get_webhook(request: web.Request) -> WebhookDetail:
    record = await _target(request)
    store = request.app[STORE].webhooks
    deliveries = [DeliveryOut.of(delivery) for delivery in await store.recent(record.id)]
    return WebhookDetail(
        **WebhookOut.of(record).model_dump(), pending=await store.pending_count(record.id), deliveries=deliveries
    )


@group.route(
    "PUT",
    "/" + WEBHOOK_ID,
    name="update",
    summary="Change a receiver's URL, events, description or state, or replace its secret (answered once)",
    access=Access.ADMIN,
    limit="20/minute",
    body=WebhookUpdate,
    response=WebhookOut,
    errors=(400, 403, 404),
)
async def update_webhook(request: web.Request, body: WebhookUpdate) -> WebhookOut:
    record = await _target(request, changing=True)
    changes: dict[str, object] = body.model_dump(exclude_none=True, exclude={"rotate_secret"})
    if "url" in changes:
        changes["url"] = await _checked(request, str(changes["url"]))
    if "events" in changes:
        changes["events"] = sorted(set(body.events or []))
    secret = "whsec_" + secrets.token_urlsafe(32) if body.rotate_secret else None
    if secret is not None:
        changes["secret"] = secret
    updated = await request.app[STORE].webhooks.update(record.id, **changes)
    if updated is None:
        raise webhook_not_found()
    log.info("admin %s updated webhook %s: %s", current_user(request).id, record.id, ", ".join(sorted(changes)))
    return WebhookOut.of(updated, secret)


@group.route(
    "DELETE",
    "/" + WEBHOOK_ID,
    name="delete",
    summary="Remove a receiver with its pending deliveries",
    access=Access.ADMIN,
    limit="20/minute",
    errors=(400, 403, 404),
)
async def delete_webhook(request: web.Request) -> None:
    record = await _target(request, changing=True)
    if not await request.app[STORE].webhooks.delete(record.id):
        raise webhook_not_found()
    log.info("admin %s removed webhook %s", current_user(request).id, record.id)
