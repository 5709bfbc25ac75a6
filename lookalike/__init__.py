"""lookalike: visual "more like this" recommendations for a product catalogue.

The public API::

    import lookalike
    report = lookalike.build("fashion.csv", "my-index", images="images/")
    rec = lookalike.Recommender.load("my-index")
    rec.similar("13683", k=5, same="Gender")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from lookalike.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_COLOUR_WEIGHT,
    DEFAULT_ID_COLUMN,
    DEFAULT_IMAGE_COLUMN,
    DEFAULT_K,
    DEFAULT_METRIC,
    DEFAULT_WORKERS,
    METRICS,
)
from lookalike.demo import demo_catalog
from lookalike.encoders import DEFAULT_MODEL, DEFAULT_POOLING, MODELS, POOLINGS, Encoder, get_encoder
from lookalike.engines import DEFAULT_ENGINE, ENGINES
from lookalike.errors import (
    CatalogError,
    ImageError,
    ImageNotFoundError,
    ImageTooLargeError,
    IndexFormatError,
    InvalidQueryError,
    LookalikeError,
    MissingDependencyError,
    ModelError,
    NotAnImageError,
    NoTextTowerError,
    UnknownProductError,
)
from lookalike.folder.manifest import QueryDefaults, Rule
from lookalike.reading.catalog import Catalog, RowProblem, load_catalog
from lookalike.search.backends import BACKENDS, ExactIndex, VectorIndex
from lookalike.search.conditions import Condition, parse_condition
from lookalike.search.recommender import Recommendation, Recommender, Results
from lookalike.writing.build import BuildReport, build
from lookalike.writing.writer import Change, ChangeReport, Index, IndexWriter, Steering

if TYPE_CHECKING:
    from lookalike.reading.fetch import Fetched, PhotoFetcher


def __getattr__(name: str) -> Any:
    """``PhotoFetcher`` and ``Fetched`` import httpx: only when asked for."""
    if name in ("PhotoFetcher", "Fetched"):
        from lookalike.reading import fetch

        return getattr(fetch, name)
    raise AttributeError(f"module 'lookalike' has no attribute {name!r}")

__all__ = [
    "__version__",
    # building
    "build",
    "BuildReport",
    "load_catalog",
    "Catalog",
    "RowProblem",
    "PhotoFetcher",
    "Fetched",
    "demo_catalog",
    # changing an index
    "IndexWriter",
    "Index",
    "ChangeReport",
    "Change",
    "Rule",
    "QueryDefaults",
    "Steering",
    # querying
    "Recommender",
    "Recommendation",
    "Results",
    "Condition",
    "parse_condition",
    # models and back ends
    "Encoder",
    "get_encoder",
    "MODELS",
    "POOLINGS",
    "VectorIndex",
    "ExactIndex",
    "BACKENDS",
    "ENGINES",
    # defaults
    "DEFAULT_MODEL",
    "DEFAULT_POOLING",
    "DEFAULT_METRIC",
    "METRICS",
    "DEFAULT_K",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_WORKERS",
    "DEFAULT_ID_COLUMN",
    "DEFAULT_IMAGE_COLUMN",
    "DEFAULT_COLOUR_WEIGHT",
    "DEFAULT_ENGINE",
    # errors
    "LookalikeError",
    "CatalogError",
    "ImageError",
    "NotAnImageError",
    "ImageTooLargeError",
    "ImageNotFoundError",
    "ModelError",
    "NoTextTowerError",
    "IndexFormatError",
    "UnknownProductError",
    "InvalidQueryError",
    "MissingDependencyError",
]
