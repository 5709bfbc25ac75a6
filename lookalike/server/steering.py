"""The shop's steering over HTTP: ``/settings`` (query defaults) and ``/rules`` (pinned and
blocked pairs). Reading them is a read (the read token); changing them is a write (the write
token), applied by the worker's writer process like a product write: one generation each,
which every worker serves from its next request."""

from typing import TYPE_CHECKING, Any, Optional

from lookalike.errors import InvalidQueryError
from lookalike.server.edge import MAX_JSON_BYTES, Refused, describe

if TYPE_CHECKING:
    from lookalike.folder.manifest import Rule
    from lookalike.server.app import Service
    from lookalike.server.writer import WriterProcess

__all__ = ["add_steering_routes"]


def add_steering_routes(app: Any, service: "Service", writes_on: Any, writer: "WriterProcess | None") -> None:
    """``GET``/``PUT /settings``, ``GET``/``POST``/``DELETE /rules`` on ``app``."""
    from fastapi import Depends, Query, Request
    from fastapi.responses import JSONResponse
    from pydantic import ValidationError
    from starlette.concurrency import run_in_threadpool

    from lookalike.folder.manifest import QueryDefaults

    reads = [Depends(service.read_guard)]

    SettingsIn, RuleIn = _models()

    def current() -> Any:
        rec = service.rec()
        return {"generation": rec.generation, "colour_weight": rec.colour_weight, **rec.query_defaults.to_json(),
                "rules": [r.to_json() for r in rec.rules]}

    def the_writer() -> "WriterProcess":
        assert writer is not None, "writes_on refuses every write when writes are off"
        return writer

    async def body_of(request: Request, model: Any) -> Any:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise Refused(415, "send application/json")
        try:
            return model.model_validate_json(await service.read_body(request, MAX_JSON_BYTES))
        except ValidationError as exc:
            raise Refused(422, describe(exc.errors())) from None

    async def committed(steering: Any) -> JSONResponse:
        await run_in_threadpool(service.refresh)
        return JSONResponse(steering.to_dict(), headers={"Lookalike-Generation": str(steering.generation)})

    @app.get("/settings", dependencies=reads, summary="The index's query defaults and colour weight")
    def get_settings() -> Any:
        return {k: v for k, v in current().items() if k != "rules"}

    @app.put("/settings", dependencies=[Depends(writes_on)], summary="Set the index's query defaults",
             description="Replaces the defaults whole: a default where, boosts, caps per column, diversity, and "
                         "the colour weight (if given). Every query applies them unless it sets "
                         "`defaults=false`; a query's own condition or boost on a column replaces the default's.")
    async def put_settings(request: Request) -> Any:
        asked = await body_of(request, SettingsIn)
        defaults = QueryDefaults(tuple(asked.where), tuple(asked.boost), tuple(asked.max_per), asked.diversity)
        return await committed(await the_writer().steer("defaults", (defaults, asked.colour_weight)))

    @app.get("/rules", dependencies=reads, summary="The pinned and blocked pairs")
    def get_rules() -> Any:
        body = current()
        return {"generation": body["generation"], "rules": body["rules"]}

    @app.post("/rules", dependencies=[Depends(writes_on)], summary="Pin or block a product",
              description="`{\"kind\": \"pin\", \"for\": A, \"show\": B, \"rank\": 1}` shows B at rank 1 for "
                          "queries by A (when B passes the query's filters); `{\"kind\": \"block\", \"for\": A, "
                          "\"show\": B}` never shows B for A (`for` null: for every query). 404 for an unknown "
                          "product.")
    async def post_rule(request: Request) -> Any:
        asked = await body_of(request, RuleIn)
        rule = _rule(asked.kind, asked.show, asked.for_id, asked.rank)
        return await committed(await the_writer().steer("rules", ([rule], [])))

    @app.delete("/rules", dependencies=[Depends(writes_on)], summary="Remove a rule")
    async def delete_rule(kind: str = Query(..., description="pin or block"),
                          show: str = Query(..., description="the product the rule shows or hides"),
                          for_id: Optional[str] = Query(None, alias="for", description="its query product")) -> Any:
        rule = _rule(kind, show, for_id, 1)
        return await committed(await the_writer().steer("rules", ([], [rule])))


def _models() -> tuple[Any, Any]:
    """The request bodies (pydantic is imported only where the server runs)."""
    from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

    class SettingsIn(BaseModel):
        """The index's query defaults, replaced whole (what is not sent is cleared)."""

        model_config = ConfigDict(extra="forbid")
        where: list[StrictStr] = Field(default_factory=list, examples=[["in_stock=yes"]])
        boost: list[StrictStr] = Field(default_factory=list, examples=[["popularity:*0.01"]])
        max_per: list[StrictStr] = Field(default_factory=list, examples=[["Brand=2"]])
        diversity: Optional[StrictFloat] = Field(None, description="0..1; null: off")
        colour_weight: Optional[StrictFloat] = Field(None, description="the index's colour weight; null: unchanged")

    class RuleIn(BaseModel):
        model_config = ConfigDict(extra="forbid", populate_by_name=True)
        kind: StrictStr = Field(description="pin or block", examples=["pin"])
        show: StrictStr = Field(description="the product shown (pin) or hidden (block)")
        for_id: Optional[StrictStr] = Field(None, alias="for", description="the query product; block: null for all")
        rank: StrictInt = Field(1, description="pin: the rank it is shown at")

    return SettingsIn, RuleIn


def _rule(kind: str, show: str, for_id: Optional[str], rank: int) -> "Rule":
    from lookalike.folder.manifest import Rule

    if kind not in ("pin", "block"):
        raise InvalidQueryError(f"a rule's kind is pin or block, not {kind!r}")
    return Rule(kind, show.strip(), None if for_id is None or not for_id.strip() else for_id.strip(), rank)
