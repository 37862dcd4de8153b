"""/api/v1/models: the speech and denoising models of the online worker nodes, loading and unloading them.

Jobs load the model they need themselves; loading ahead spares the first job the wait, unloading
gives the memory back until the next job needs the model. Both act on every online node that has
the model, or on the one ``node_id`` names; they answer once done, or after ``[ai] wait_seconds``
with the state so far (``loading``), to poll at ``GET /models/:id/status``."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from control.api.ai_common import answer, service
from control.api.schemas import RequestModel
from control.endpoints import Access, EndpointGroup
from control.errors import not_found

group = EndpointGroup("/api/v1/models", "models")
MODEL_ID = r"{model_id:[a-z0-9][a-z0-9._-]*}"
Status = Literal["available", "loading", "loaded", "unloading", "error"]


class ModelOnNode(BaseModel):
    node_id: str
    status: Status
    memory_bytes: int | None = Field(description="taken by the model on that node while loaded")
    error: str | None


class ModelOut(BaseModel):
    model_id: str
    task: Literal["recognition", "emotion", "synthesis-detection", "denoising", "super-resolution", "unknown"]
    engine: str
    languages: list[str] = Field(description="primary language tags, or ['*'] for any")
    labels: list[str] = Field(description="a classifier's classes")
    description: str
    source: str = Field(description="package:<name>, or directory:<path> under [ai] model_dir")
    size_bytes: int = Field(description="on disk")
    status: Status = Field(description="loaded where any node holds it, loading where one loads it, ...")
    error: str | None = Field(description="why it cannot load, when it cannot anywhere")
    memory_bytes: int | None = Field(description="taken on the nodes holding it")
    node_id: str | None = Field(description="a node holding it loaded")
    nodes: list[ModelOnNode]

    @classmethod
    def of(cls, model: dict[str, Any]) -> ModelOut:
        return cls.model_validate({key: model[key] for key in cls.model_fields})


class ModelTarget(RequestModel):
    node_id: str | None = Field(None, min_length=1, max_length=100, description="one node; default: every node")


def _model_id(request: web.Request) -> str:
    model_id = request.match_info["model_id"]
    if len(model_id) > 64:
        raise not_found("Model not found")
    return model_id


@group.route(
    "GET",
    "",
    name="list",
    summary="The models of every online worker node and their state",
    access=Access.USER,
    limit="50/minute",
    response=list[ModelOut],
    errors=(503,),
)
async def list_models(request: web.Request) -> list[ModelOut]:
    return [ModelOut.of(model) for model in await answer(service(request).models())]


@group.route(
    "POST",
    f"/{MODEL_ID}/load",
    name="load",
    summary="Load a model on every node that has it (or on node_id)",
    access=Access.USER,
    limit="10/minute",
    body=ModelTarget,
    response=ModelOut,
    errors=(503,),
)
async def load(request: web.Request, body: ModelTarget) -> ModelOut:
    return ModelOut.of(await answer(service(request).load(_model_id(request), body.node_id)))


@group.route(
    "DELETE",
    f"/{MODEL_ID}/unload",
    name="unload",
    summary="Unload a model and free its memory, on every node (or on node_id)",
    access=Access.USER,
    limit="10/minute",
    query=ModelTarget,
    response=ModelOut,
    errors=(503,),
)
async def unload(request: web.Request, query: ModelTarget) -> ModelOut:
    return ModelOut.of(await answer(service(request).load(_model_id(request), query.node_id, unload=True)))


@group.route(
    "GET",
    f"/{MODEL_ID}/status",
    name="status",
    summary="A model's state on each node, asked of the nodes now",
    access=Access.USER,
    limit="50/minute",
    response=ModelOut,
    errors=(503,),
)
async def status(request: web.Request) -> ModelOut:
    return ModelOut.of(await answer(service(request).model(_model_id(request))))
