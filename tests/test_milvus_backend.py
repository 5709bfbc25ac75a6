"""An index searched in Milvus (Lite, a local .db file) answers as the exact oracle does, and
follows live changes: the back end contract, end to end through Recommender and Index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")

from lookalike import Index, InvalidQueryError, Recommender, build, demo_catalog  # noqa: E402
from lookalike.cli import main  # noqa: E402

DEMO = demo_catalog()
IMAGES = DEMO.parent / "images"
QUERIES = ({"same": "Gender"}, {}, {"where": {"Colour": ["Black", "White"]}},
           {"same": ["Gender"], "where": {"Usage": "Casual"}}, {"same": "Gender", "where": {"Gender": ["Men", "Boys"]}})


def _same(a, b) -> None:
    """Same products in the same order, scores equal to float32 precision. Where two products
    hold the same photo (equal vectors, one duplicate group: one of them is shown), either
    may fill the place: which of exactly tied rows Milvus hands back is its own choice."""
    assert np.allclose([r.score for r in a], [r.score for r in b], atol=1e-6)
    for x, y in zip(a, b, strict=True):
        if x.id != y.id:
            assert x.metadata["Image"] == y.metadata["Image"], (a.ids, b.ids)  # one photo file
        else:
            assert x.metadata == y.metadata


def _check_against_exact(index: Path, pids: list[str]) -> None:
    remote, exact = Recommender.load(index), Recommender.load(index, backend="exact")
    assert remote.index.name == "milvus" and exact.index.name == "exact"
    for pid in pids:
        for kw in QUERIES:
            _same(remote.similar(pid, k=6, **kw), exact.similar(pid, k=6, **kw))


@pytest.fixture
def milvus_index(tmp_path, encoder) -> Path:
    """The demo catalogue in its own Milvus Lite file (a copied folder would share the collection
    its manifest names)."""
    build(DEMO, tmp_path / "index", encoder=encoder, backend="milvus", milvus_uri=tmp_path / "milvus.db",
          show_progress_bar=False)
    return tmp_path / "index"


def test_results_equal_the_exact_oracle(demo_milvus_index, demo_rec):
    rec = Recommender.load(demo_milvus_index)
    assert rec._arrays is None  # no vector was read to answer these: they are searched in Milvus
    for pid in demo_rec.ids:
        for kw in QUERIES:
            _same(rec.similar(pid, k=5, **kw), demo_rec.similar(pid, k=5, **kw))
    assert rec._arrays is None
    _same(rec.similar(demo_rec.ids[:3], k=8), demo_rec.similar(demo_rec.ids[:3], k=8))
    photo = IMAGES / "13683.jpg"
    _same(rec.similar(image=photo, k=5, where={"Gender": "Women"}), demo_rec.similar(image=photo, k=5,
                                                                                      where={"Gender": "Women"}))
    assert rec.export(k=3, same="Gender").equals(demo_rec.export(k=3, same="Gender"))


def test_quotes_in_filter_values_never_change_the_expression(demo_milvus_index):
    rec = Recommender.load(demo_milvus_index)
    pid = rec.ids[0]
    for value in ['Men" or 1==1 or "', "Men' or true", "Men\\", 'Men"', "Men\n"]:
        assert rec.similar(pid, k=5, where={"Gender": value}).ids == []


def test_live_changes_reach_milvus(milvus_index, encoder):
    table = pd.read_csv(DEMO, dtype=str, keep_default_na=False)
    ix = Index.open(milvus_index, encoder=encoder)
    gone = table["ProductId"].iloc[:5].tolist()
    ix.remove(gone)
    new = {**table.iloc[10].to_dict(), "ProductId": "new-1", "Image": table["Image"].iat[0]}  # a photo now gone
    changed = {**table.iloc[20].to_dict(), "Image": table["Image"].iat[60]}
    renamed = {**table.iloc[30].to_dict(), "ProductTitle": "renamed in Milvus too"}
    report = ix.upsert([new, changed, renamed], images=IMAGES)
    assert [c.status for c in report.changes] == ["added", "re-embedded", "metadata"]
    rec = Recommender.load(milvus_index)
    assert rec.index.name == "milvus" and "new-1" in rec and not any(p in rec for p in gone)
    hit = rec.similar(image=IMAGES / table["Image"].iat[0], k=3)
    assert hit.ids[0] == "new-1"
    for r in rec.similar(table["ProductId"].iat[31], k=30):
        assert r.id not in gone
    _check_against_exact(milvus_index, rec.ids[::7])
    ix.compact()  # Milvus already holds every row: compaction leaves it as it is
    _check_against_exact(milvus_index, rec.ids[::11])


def test_sync_reaches_milvus(milvus_index, encoder, tmp_path):
    table = pd.read_csv(DEMO, dtype=str, keep_default_na=False)
    today = table.drop(index=[0, 1]).copy()
    today.loc[5, "ProductTitle"] = "on sale"
    today.to_csv(tmp_path / "today.csv", index=False)
    report = Index.open(milvus_index, encoder=encoder).sync(tmp_path / "today.csv", images=IMAGES)
    assert report.counts()["removed"] == 2 and report.counts()["metadata"] == 1
    rec = Recommender.load(milvus_index)
    assert rec.product(table["ProductId"].iat[5])["ProductTitle"] == "on sale"
    _check_against_exact(milvus_index, rec.ids[::9])


def test_build_options(tmp_path, encoder, capsys):
    with pytest.raises(InvalidQueryError, match="milvus-uri"):
        build(DEMO, tmp_path / "x", encoder=encoder, backend="milvus", show_progress_bar=False)
    with pytest.raises(InvalidQueryError, match="metric cosine"):
        build(DEMO, tmp_path / "x", encoder=encoder, backend="milvus", metric="euclidean", colour_weight=0,
              milvus_uri=tmp_path / "m.db", show_progress_bar=False)
    table = pd.read_csv(DEMO, dtype=str, keep_default_na=False).iloc[:12]
    table.to_csv(tmp_path / "c.csv", index=False)
    code = main(["-q", "build", str(tmp_path / "c.csv"), "--images", str(IMAGES), "--out", str(tmp_path / "idx"),
                 "--backend", "milvus", "--milvus-uri", str(tmp_path / "m.db"), "--collection", "shop"])
    assert code == 0, capsys.readouterr().err
    rec = Recommender.load(tmp_path / "idx")
    config = rec.manifest["index"]
    assert config["backend"] == "milvus" and config["collection"].startswith("shop_")
    assert config["uri"] == str((tmp_path / "m.db").resolve()) and config["index_type"] == "FLAT"
    assert len(rec.similar(table["ProductId"].iat[0], k=3).ids) == 3
