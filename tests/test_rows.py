"""The row format (lookalike.folder.rows): searchable rows, query vectors, photo identity, reuse."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lookalike import Recommender, build, demo_catalog
from lookalike.folder.rows import StoredRows, file_sha1, file_sha1s, l2_normalize, photo_sha1, query_vector, searchable

DEMO = demo_catalog()
IMAGES = DEMO.parent / "images"


def test_a_query_scores_rows_as_the_documented_blend():
    rng = np.random.default_rng(0)
    shape, colour = l2_normalize(rng.normal(size=(5, 8))), l2_normalize(rng.normal(size=(5, 4)))
    qs, qc = rng.normal(size=8), rng.normal(size=4)
    for w in (0.0, 0.15, 1.0):
        scores = searchable(shape, colour, "cosine") @ query_vector(qs, qc, w, "cosine")
        want = (1 - w) * shape @ l2_normalize(qs) + w * colour @ l2_normalize(qc)
        assert np.allclose(scores, want, atol=1e-6)
    assert searchable(shape, colour, "euclidean").shape == (5, 8)  # no colour part without a blend
    assert np.array_equal(query_vector(qs, qc, 0.3, "euclidean"), qs.astype(np.float32))


def test_photo_identity_is_the_sha1_of_its_bytes(tmp_path):
    photo = IMAGES / pd.read_csv(DEMO, dtype=str)["Image"].iat[0]
    assert file_sha1(photo) == photo_sha1(photo.read_bytes())
    assert file_sha1s([photo, tmp_path / "missing.jpg"]) == [photo_sha1(photo.read_bytes()), ""]


def test_stored_rows_reuse_the_product_s_own_row_then_any_row_with_those_bytes():
    stored = StoredRows(["a", "b", "c"], ["s1", "s2", "s1"])
    assert stored.reuse("a", "s1") == (0, True)  # its photo unchanged
    assert stored.reuse("c", "s1") == (2, True)
    assert stored.reuse("b", "s1") == (0, False)  # re-shot with bytes another product has
    assert stored.reuse("new", "s2") == (1, False)
    assert stored.reuse("a", "s9") == (None, False)  # to embed


def test_build_update_reuses_rows_as_a_live_change_does(tmp_path, encoder):
    """`build --update` takes stored vectors by photo bytes, also for a new id whose photo the
    index holds: bit-identical to what a sync gives."""
    table = pd.read_csv(DEMO, dtype=str, keep_default_na=False).iloc[:12]
    table.to_csv(tmp_path / "a.csv", index=False)
    build(tmp_path / "a.csv", tmp_path / "index", images=IMAGES, encoder=encoder, show_progress_bar=False)
    before = Recommender.load(tmp_path / "index")
    twin = table.iloc[[3]].assign(ProductId="twin-of-3")
    pd.concat([table, twin]).to_csv(tmp_path / "b.csv", index=False)
    report = build(tmp_path / "b.csv", tmp_path / "index", images=IMAGES, encoder=encoder, update=True,
                   show_progress_bar=False)
    assert report.reused == 13  # every row, the twin's too: nothing embedded
    after = Recommender.load(tmp_path / "index")
    source = table["ProductId"].iat[3]
    assert np.array_equal(after.vectors[after.row("twin-of-3")], before.vectors[before.row(source)])
    assert np.array_equal(after.vectors[after.row(source)], before.vectors[before.row(source)])
