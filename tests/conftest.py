"""Shared fixtures: real photos (the bundled demo and ../shared), one model, one demo index."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOOKALIKE_SHARED", ROOT.parent / "shared")) / "datasets"
FASHION = SHARED / "fashion-images"
FULLRES = SHARED / "fashion-images-fullres"
#: what store_index records as its photo credit (the page shows it)
STORE_CREDIT = "Photos: OpenCart and PrestaShop demo data"

# never reach the network; keep exported models in the repo's cache folder
os.environ.setdefault("LOOKALIKE_CACHE_DIR", str(ROOT / ".cache" / "lookalike"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """The 2,906-product reference catalogue (read-only)."""
    if not (FASHION / "fashion.csv").is_file():
        pytest.skip(f"shared data set not found at {FASHION}")
    return FASHION


@pytest.fixture(scope="session")
def fullres_dir() -> Path:
    if not (FULLRES / "fashion.csv").is_file():
        pytest.skip(f"shared data set not found at {FULLRES}")
    return FULLRES


@pytest.fixture(scope="session")
def encoder():
    """The default model, shared by every test (ONNX export happens once)."""
    from lookalike import get_encoder

    return get_encoder()


@pytest.fixture(scope="session")
def demo_index(tmp_path_factory, encoder) -> Path:
    """The bundled demo catalogue (99 real products, 4 genders) built once with defaults."""
    from lookalike import build, demo_catalog

    out = tmp_path_factory.mktemp("demo") / "index"
    build(demo_catalog(), out, encoder=encoder, show_progress_bar=False)
    return out


@pytest.fixture(scope="session")
def demo_milvus_index(tmp_path_factory, encoder) -> Path:
    """The demo catalogue searched in Milvus Lite (a local .db file): the same answers as
    ``demo_index``, for suites that run against both back ends."""
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")
    from lookalike import build, demo_catalog

    folder = tmp_path_factory.mktemp("demo-milvus")
    build(demo_catalog(), folder / "index", encoder=encoder, backend="milvus", milvus_uri=folder / "milvus.db",
          show_progress_bar=False)
    return folder / "index"


@pytest.fixture(scope="session")
def demo_rec(demo_index):
    from lookalike import Recommender

    return Recommender.load(demo_index)


@pytest.fixture(scope="session")
def fashion_hnsw_index(tmp_path_factory, fashion_dir, encoder) -> Path:
    """The 2,906-product set built once per session, with the HNSW back end."""
    from lookalike import build

    out = tmp_path_factory.mktemp("fashion-2906-hnsw") / "index"
    build(fashion_dir / "fashion.csv", out, encoder=encoder, backend="hnsw", show_progress_bar=False)
    return out


@pytest.fixture(scope="module", autouse=True)
def _milvus_connections_closed_after_each_module():
    """A module's searches on Milvus Lite indexes keep the process's shared connection, and with
    it a Lite server process, open; close them when the module ends so none outlives it (a later
    module counting this process's children would find them)."""
    yield
    import sys

    milvus = sys.modules.get("lookalike.search.backends.milvus")
    if milvus is not None:
        milvus.close_stores()


@pytest.fixture(scope="session")
def store_dir() -> Path:
    """../shared/datasets/store-demos: 25 real products of two shops, with prices (read-only)."""
    if not (SHARED / "store-demos" / "catalog.csv").is_file():
        pytest.skip(f"shared data set not found at {SHARED / 'store-demos'}")
    return SHARED / "store-demos"


@pytest.fixture(scope="session")
def store_index(tmp_path_factory, encoder, store_dir) -> Path:
    """store-demos built once: the index with a numeric column, ``price``."""
    from lookalike import build

    store = store_dir
    out = tmp_path_factory.mktemp("store-demos") / "index"
    build(store / "catalog.csv", out, images=store / "images", id_column="product_id", image_column="image",
          encoder=encoder, photo_credit=STORE_CREDIT, show_progress_bar=False)
    return out


@pytest.fixture
def restore_logging():
    """``lookalike.cli.main`` configures logging for the process; give the next test what it had."""
    import logging

    root, pkg = logging.getLogger(), logging.getLogger("lookalike")
    saved = (list(root.handlers), root.level, pkg.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    pkg.setLevel(saved[2])
