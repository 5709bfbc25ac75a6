"""The documented surface: the pydantic models of the HTTP edge and the schema pages
(``/openapi.json``, ``/docs``, ``/redoc``) behind the read token."""

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from lookalike.encoders.hf import MAX_TEXT_CHARS
from lookalike.search.recommender import MAX_IDS, MAX_K

__all__ = ["Schemas", "schemas", "add_schema_routes"]


@dataclass(frozen=True)
class Schemas:
    """The pydantic models, built on first use (pydantic is a server extra)."""

    ErrorOut: Any
    HealthOut: Any
    ProductOut: Any
    SimilarOut: Any
    SimilarIn: Any

    def error(self, why: str) -> dict[str, Any]:
        """An OpenAPI ``responses`` entry of an error answer."""
        return {"model": self.ErrorOut, "description": why}

    @property
    def lookup_errors(self) -> dict[int | str, dict[str, Any]]:
        """The errors every product route may answer."""
        return {404: self.error("unknown product id"), 422: self.error("bad parameter: k, a column, a filter")}


def schemas() -> Schemas:
    """The models, built here so that importing the server does not import pydantic."""
    from pydantic import BaseModel, ConfigDict, Field

    class ErrorOut(BaseModel):
        detail: str = Field(examples=["unknown product id: 99999"])

    class HealthOut(BaseModel):
        status: str = Field(examples=["ok"])
        rows: int
        model: str = Field(examples=["efficientnet-lite0/gem"])
        metric: str
        backend: str
        id_column: str
        columns: list[str]
        version: str
        text_queries: bool = Field(False, description="POST /similar takes {\"text\": ...} (a CLIP or SigLIP model)")

    class ProductOut(BaseModel):
        """A product: ``id`` plus every catalogue column, as text, and ``photos``: its photos as the
        catalogue names them, main photo first (``/products/{id}/image?photo=N`` serves photo N)."""

        model_config = ConfigDict(extra="allow")
        __pydantic_extra__: dict[str, str]
        id: str
        photos: list[str] = Field(default_factory=list)

    class RecommendationOut(BaseModel):
        """One result: ``id``, ``rank`` (1 = most alike), ``score`` (higher = more alike),
        and the product's catalogue columns."""

        model_config = ConfigDict(extra="allow")
        __pydantic_extra__: dict[str, str]
        id: str
        rank: int
        score: float
        matched_photo: Optional[str] = Field(None, description="which of the product's photos matched best "
                                             "(in an index where products have several)")
        explain: Optional[dict[str, float]] = Field(None, description="with explain=true: the score in parts that "
                                                    "add up to it (shape, colour, each boost)")
        rule: Optional[str] = Field(None, description="the rule that placed it (a pin), if one did")

    class SimilarOut(BaseModel):
        query: dict[str, Any] = Field(description="what was asked, as the library understood it")
        results: list[RecommendationOut]

    SimilarIn = _similar_in()

    return Schemas(ErrorOut, HealthOut, ProductOut, SimilarOut, SimilarIn)


def _similar_in() -> Any:
    """``POST /similar``'s JSON body."""
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

    class SimilarIn(BaseModel):
        """Products that look like several products at once (e.g. recently viewed items), or like
        words (``text``, where the index's model has a text tower: ``GET /health``'s ``text_queries``)."""

        model_config = ConfigDict(extra="forbid")
        ids: Optional[list[Union[StrictStr, StrictInt]]] = Field(
            None, max_length=MAX_IDS, description=f"product ids, at most {MAX_IDS} (or text)",
            examples=[["13683", "39386"]]
        )
        text: Optional[StrictStr] = Field(
            None, max_length=MAX_TEXT_CHARS, description="words to search the photos for (instead of ids), "
            "with the text tower of an index built with --model hf:DIR of a CLIP or SigLIP model; 503 otherwise",
            examples=["red running shoes"])
        k: Optional[StrictInt] = Field(None, description=f"number of results, 1..{MAX_K} (default: the k in the URL)")
        same: Union[str, list[str], None] = Field(
            None, description="keep results to the query products' values of these columns", examples=[["Gender"]]
        )
        where: Union[dict[str, Union[str, list[str]]], list[str], None] = Field(
            None, description="keep results whose column holds one of the values (an object: column → values), "
            "or that meet every condition of a list such as [\"price<50\", \"Gender=Men,Women\", \"Colour!=Black\"]",
            examples=[{"Colour": ["Blue"]}, ["price=10..50", "Colour!=Black"]]
        )
        colour_weight: Optional[float] = Field(None, strict=True, description="share of the score given to colour, 0..1")
        collapse_duplicates: Optional[StrictBool] = Field(None, description="at most one product per identical photo")
        siblings: Optional[StrictBool] = Field(None, description="list the query products' siblings (same parent) too")
        collapse_parent: Optional[StrictBool] = Field(None, description="at most one product of each parent")
        negative_ids: Optional[list[Union[StrictStr, StrictInt]]] = Field(
            None, max_length=MAX_IDS, description="less like these products: the query moves away from their look, "
            "and they are never listed", examples=[["21838"]])
        boost: Optional[list[StrictStr]] = Field(None, max_length=16, description="boosts such as "
                                                 "\"in_stock=yes:+0.05\" or \"popularity:*0.01\"")
        max_per: Optional[list[StrictStr]] = Field(None, description="caps such as \"Brand=2\"")
        diversity: Optional[float] = Field(None, strict=True, description="0..1: maximal marginal relevance")
        explain: Optional[StrictBool] = Field(None, description="each result's score in parts")
        defaults: Optional[StrictBool] = Field(None, description="apply the index's query defaults (default true)")
        rules: Optional[StrictBool] = Field(None, description="apply the index's pinned and blocked pairs "
                                            "(default true)")
        box: Optional[StrictStr] = Field(None, description="only for photo queries (multipart field 'box')")

    return SimilarIn


def add_schema_routes(app: Any, guard: Callable[..., None]) -> None:
    """``/openapi.json``, ``/docs`` and ``/redoc`` as FastAPI serves them, each behind ``guard``
    (the read token, a no-op without one): the schema lists every endpoint and column filter,
    so it is a read like any other. A browser does not send the token by itself; behind a read
    token, open the pages through a proxy or an extension that adds the header."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.responses import HTMLResponse, JSONResponse

    def schema_url(request: Any) -> str:
        return request.scope.get("root_path", "").rstrip("/") + "/openapi.json"

    async def openapi(request: Any) -> JSONResponse:
        guard(request)
        root_path = request.scope.get("root_path", "").rstrip("/")
        schema = app.openapi()
        if root_path and app.root_path_in_servers and root_path not in {s.get("url") for s in schema.get("servers", [])}:
            schema = {**schema, "servers": [{"url": root_path}, *schema.get("servers", [])]}
        return JSONResponse(schema)

    async def docs(request: Any) -> HTMLResponse:
        guard(request)
        return get_swagger_ui_html(openapi_url=schema_url(request), title=f"{app.title} - Swagger UI")

    async def redoc(request: Any) -> HTMLResponse:
        guard(request)
        return get_redoc_html(openapi_url=schema_url(request), title=f"{app.title} - ReDoc")

    for path, endpoint in (("/openapi.json", openapi), ("/docs", docs), ("/redoc", redoc)):
        app.add_route(path, endpoint, include_in_schema=False)
