"""/api/v1/my: the caller's own meetings, upcoming and past (not those still waiting to be admitted to)."""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from control.api.meetings import MeetingOut
from control.api.schemas import Page, RequestModel
from control.context import STORE, current_user
from control.endpoints import Access, EndpointGroup
from control.envelope import utc_now

group = EndpointGroup("/api/v1/my", "my")


class PageQuery(RequestModel):
    page: int = Field(1, ge=1, le=1_000_000)
    page_size: int = Field(20, ge=1, le=100)


async def _page(request: web.Request, query: PageQuery, **criteria: object) -> Page[MeetingOut]:
    items, total = await request.app[STORE].meetings.search(
        viewer_id=current_user(request).id, page=query.page, page_size=query.page_size, **criteria
    )
    return Page[MeetingOut](
        items=[MeetingOut.of(m, member=True) for m in items], total=total, page=query.page, page_size=query.page_size
    )


@group.route(
    "GET",
    "/meetings",
    name="meetings",
    summary="Meetings I take part in, by start time",
    access=Access.USER,
    limit="100/minute",
    query=PageQuery,
    response=Page[MeetingOut],
)
async def my_meetings(request: web.Request, query: PageQuery) -> Page[MeetingOut]:
    return await _page(request, query)


@group.route(
    "GET",
    "/meetings/upcoming",
    name="upcoming",
    summary="My scheduled meetings still to come, soonest first",
    access=Access.USER,
    limit="100/minute",
    query=PageQuery,
    response=Page[MeetingOut],
)
async def upcoming(request: web.Request, query: PageQuery) -> Page[MeetingOut]:
    return await _page(request, query, statuses=["scheduled"], start_from=utc_now())


@group.route(
    "GET",
    "/meetings/history",
    name="history",
    summary="My ended meetings, most recently ended first",
    access=Access.USER,
    limit="100/minute",
    query=PageQuery,
    response=Page[MeetingOut],
)
async def history(request: web.Request, query: PageQuery) -> Page[MeetingOut]:
    return await _page(request, query, statuses=["ended"], newest_first=True, order_by_end=True)
