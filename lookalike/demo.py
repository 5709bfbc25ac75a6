"""The demo catalogue shipped inside the package (a sample of the Kaggle Fashion Images set)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["demo_catalog", "DEMO_DIR", "DEMO_PHOTO_CREDIT"]

DEMO_DIR = Path(__file__).parent / "data" / "demo"
#: whom the demo's photos are credited to (``build(..., photo_credit=...)``; the page shows it)
DEMO_PHOTO_CREDIT = "Photos: Kaggle Fashion Images data set (Myntra)"


def demo_catalog() -> Path:
    """Path of the bundled demo ``catalog.csv``; its photos are in ``images/`` beside it.

    Photos: Kaggle "Fashion Images" data set (Myntra), downscaled.
    """
    return DEMO_DIR / "catalog.csv"
