"""lookalike: visual "more like this" recommendations for a product catalogue.

The public API::

    import lookalike
    report = lookalike.build("fashion.csv", "my-index", images="images/")
    rec = lookalike.Recommender.load("my-index")
    rec.similar("13683", k=5, same="Gender")
"""

from __future__ import annotations

__version__ = "0.1.0"

from .catalog import Catalog, RowProblem, load_catalog
from .config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_COLOUR_WEIGHT,
    DEFAULT_ID_COLUMN,
    DEFAULT_IMAGE_COLUMN,
    DEFAULT_K,
    DEFAULT_METRIC,
    DEFAULT_WORKERS,
    METRICS,
)
from .demo import demo_catalog
from .encoders import DEFAULT_MODEL, DEFAULT_POOLING, MODELS, POOLINGS, Encoder, get_encoder
from .engines import DEFAULT_ENGINE, ENGINES
from .errors import (
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
    UnknownProductError,
)
from .index import BACKENDS, ExactIndex, VectorIndex
from .live import Change, ChangeReport, Index
from .pipeline import BuildReport, build
from .recommender import Recommendation, Recommender, Results

__all__ = [
    "__version__",
    # building
    "build",
    "BuildReport",
    "load_catalog",
    "Catalog",
    "RowProblem",
    "demo_catalog",
    # changing an index
    "Index",
    "ChangeReport",
    "Change",
    # querying
    "Recommender",
    "Recommendation",
    "Results",
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
    "IndexFormatError",
    "UnknownProductError",
    "InvalidQueryError",
    "MissingDependencyError",
]
