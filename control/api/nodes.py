"""/api/v1/nodes: the worker nodes that run AI work, as their heartbeats describe them, and a
health check that runs a small real inference on one of them."""

from __future__ import annotations

import time
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from control.api.ai_common import answer, iso_time, service
from control.endpoints import Access, EndpointGroup
from control.errors import not_found

group = EndpointGroup("/api/v1/nodes", "nodes")
NODE_ID = r"{node_id:[^/]+}"


class LoadedModel(BaseModel):
    model_id: str
    memory_bytes: int | None


class NodeOut(BaseModel):
    node_id: str
    status: Literal["online", "offline"] = Field(description="offline once silent for [ai] node_timeout_seconds")
    host: str
    pid: int
    cpu_count: int
    cpu_percent: float = Field(description="the node process, since its previous heartbeat (100 = one core)")
    load_average: float = Field(description="of its machine, over a minute")
    memory_rss_bytes: int = Field(description="the node process's resident memory")
    memory_total_bytes: int = Field(description="of its machine")
    running_jobs: int
    queue_depth: int = Field(description="jobs running there plus jobs waiting in the queues it serves")
    concurrency: int = Field(description="jobs it runs at once")
    loaded_models: list[LoadedModel]
    models: list[str] = Field(description="ids of the models it has")
    started_at: str
    last_seen: str

    @classmethod
    def of(cls, node: dict[str, Any]) -> NodeOut:
        fields = {key: node[key] for key in cls.model_fields if key not in {"models", "started_at", "last_seen"}}
        return cls(
            **fields,
            models=[model["model_id"] for model in node["models"]],
            started_at=iso_time(node["started_at"]) or "",
            last_seen=iso_time(node["last_seen"]) or "",
        )


class HealthCheck(BaseModel):
    check: str = Field(description="vad, or the id of a loaded model")
    ok: bool
    latency_ms: float | None = None
    error: str | None = None


class HealthOut(BaseModel):
    node_id: str
    healthy: bool
    latency_ms: float = Field(description="of all the checks, on the node")
    round_trip_ms: float = Field(description="from the API to the node and back, the checks included")
    checks: list[HealthCheck]


def _node_id(request: web.Request) -> str:
    node_id = request.match_info["node_id"]
    if len(node_id) > 100:
        raise not_found("Node not found")
    return node_id


@group.route(
    "GET",
    "",
    name="list",
    summary="The AI worker nodes, online and recently offline",
    access=Access.USER,
    limit="50/minute",
    response=list[NodeOut],
    errors=(503,),
)
async def list_nodes(request: web.Request) -> list[NodeOut]:
    return [NodeOut.of(node) for node in await answer(service(request).nodes())]


@group.route(
    "GET",
    f"/{NODE_ID}/status",
    name="status",
    summary="One node's heartbeat: load, memory, models, queue",
    access=Access.USER,
    limit="50/minute",
    response=NodeOut,
    errors=(503,),
)
async def node_status(request: web.Request) -> NodeOut:
    return NodeOut.of(await answer(service(request).node(_node_id(request))))


@group.route(
    "POST",
    f"/{NODE_ID}/health-check",
    name="health_check",
    summary="Run a small real inference on the node and time it",
    access=Access.USER,
    limit="20/minute",
    response=HealthOut,
    errors=(503,),
)
async def health_check(request: web.Request) -> HealthOut:
    started = time.perf_counter()
    result = await answer(service(request).health_check(_node_id(request)))
    return HealthOut.model_validate(result | {"round_trip_ms": round(1000 * (time.perf_counter() - started), 2)})
