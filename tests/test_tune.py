"""tune: fitted on some products, judged on the others, and the tuned index answers queries."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lookalike import InvalidQueryError, Recommender
from lookalike.analysis.tune import split_holdout, tune
from lookalike.cli import main


def test_holdout_split_is_stable_and_keeps_identical_photos_together():
    ids = [str(i) for i in range(1000)]
    groups = np.arange(1000)
    groups[10] = groups[11] = 10_000  # an identical pair
    a = split_holdout(ids, groups, 0.2)
    assert np.array_equal(a, split_holdout(ids, groups, 0.2))
    assert 0.15 < a.mean() < 0.25
    assert a[10] == a[11]


def test_tune_writes_a_loadable_index_and_reports_held_out_quality(demo_index, tmp_path):
    out = tmp_path / "tuned"
    info = tune(demo_index, out, labels=["ProductType"], same=["Gender"], holdout=0.3, dim=8)
    assert info["fitted_on"] + info["held_out"] == 99
    assert info["held_out"] >= 10
    for key in ("p@5_ProductType", "map@5_ProductType"):
        assert 0.0 <= info["held_out_before"][key] <= 1.0
        assert 0.0 <= info["held_out_after"][key] <= 1.0
    assert info["held_out_before"]["queries"] == info["held_out"]
    rec = Recommender.load(out)
    assert rec.manifest["tune"]["labels"] == ["ProductType"]
    assert rec.vectors.shape[1] == Recommender.load(demo_index).vectors.shape[1] + info["dim"]
    res = rec.similar("13683", k=5, same="Gender")
    assert len(res) == 5 and all(r.metadata["Gender"] == "Men" for r in res)
    # a photo query goes through the same projection: the product's own photo comes first
    photo = rec.image_path("13683")
    assert rec.similar(image=photo, k=1).ids == ["13683"]


def test_tune_refuses_bad_input(demo_index, tmp_path):
    with pytest.raises(InvalidQueryError, match="unknown column"):
        tune(demo_index, tmp_path / "x", labels=["Nope"])
    with pytest.raises(InvalidQueryError):
        tune(demo_index, tmp_path / "x", labels=["ProductType"], holdout=1.5)


def test_cli_tune_json(demo_index, tmp_path, capsys):
    assert main(["-q", "tune", str(demo_index), "--label", "ProductType", "--out", str(tmp_path / "t"),
                 "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["held_out"] > 0 and "p@5_ProductType" in info["held_out_after"]
