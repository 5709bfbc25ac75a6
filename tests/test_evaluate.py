"""evaluate: agrees exactly with counting over export; colour weight and duplicates behave."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lookalike import InvalidQueryError
from lookalike.analysis.evaluate import compare, compare_chart, evaluate, format_scores
from lookalike.cli import main


def _count_over_export(rec, labels, k, same):
    export = rec.export(k=k, same=same, show_progress_bar=False)
    meta = {c: dict(zip(rec.ids, rec.metadata[c].astype(str))) for c in labels}
    hits = {lab: 0 for lab in labels}
    both = 0
    for q, pid in zip(export["query_id"], export["id"]):
        ok = [meta[lab][q] == meta[lab][pid] for lab in labels]
        for lab, good in zip(labels, ok):
            hits[lab] += good
        both += all(ok)
    n = len(rec)
    return {**{lab: hits[lab] / (n * k) for lab in labels}, "all": both / (n * k)}


@pytest.mark.parametrize("same", [[], ["Gender"]])
def test_evaluate_equals_counting_over_export(demo_rec, same):
    labels = ["ProductType", "Colour"]
    scores = evaluate(demo_rec, labels, k=5, same=same, show_progress_bar=False)
    counted = _count_over_export(demo_rec, labels, 5, same)
    assert scores["p@5_ProductType"] == pytest.approx(counted["ProductType"], abs=1e-12)
    assert scores["p@5_Colour"] == pytest.approx(counted["Colour"], abs=1e-12)
    assert scores["p@5_all"] == pytest.approx(counted["all"], abs=1e-12)
    for key in ("r@5_ProductType", "map@5_ProductType", "map@5_all"):
        assert 0.0 <= scores[key] <= 1.0


def test_groups_average_to_the_whole(demo_rec):
    scores = evaluate(demo_rec, ["ProductType"], k=5, same="Gender", group_by=["Gender"], show_progress_bar=False)
    groups = scores["groups"]["Gender"]
    assert set(groups) == {"Men", "Women", "Boys", "Girls"}
    total = sum(g["queries"] * g["p@5_ProductType"] for g in groups.values()) / len(demo_rec)
    assert total == pytest.approx(scores["p@5_ProductType"])


def test_colour_weight_raises_colour_precision(demo_rec):
    shape = evaluate(demo_rec, ["Colour"], k=5, same="Gender", colour_weight=0.0, show_progress_bar=False)
    colour = evaluate(demo_rec, ["Colour"], k=5, same="Gender", colour_weight=0.6, show_progress_bar=False)
    assert colour["p@5_Colour"] > shape["p@5_Colour"]


def test_unknown_label_is_a_query_error(demo_rec):
    with pytest.raises(InvalidQueryError, match="unknown column"):
        evaluate(demo_rec, ["Nope"], show_progress_bar=False)


def test_compare_and_chart(demo_rec, tmp_path):
    results = compare([(demo_rec, 0.0), (demo_rec, 0.3)], labels=["ProductType"], k=5, show_progress_bar=False)
    assert len(results) == 2 and "w=0.3" in results[1]["name"]
    assert "p@5_ProductType" in format_scores(results)
    png = compare_chart(results, tmp_path / "cmp.png")
    assert png.stat().st_size > 5000


def test_cli_evaluate_json(demo_index, capsys):
    assert main(["-q", "evaluate", str(demo_index), "--label", "ProductType", "--same", "Gender",
                 "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert 0.0 < data["p@5_ProductType"] <= 1.0


@pytest.mark.slow
def test_quality_on_the_reference_catalogue(fashion_dir, tmp_path_factory, encoder):
    """The targets of issues 3 and 5 on the 2,906 products (slow: builds the full index)."""
    from lookalike import Recommender, build

    out = tmp_path_factory.mktemp("q") / "idx"
    build(fashion_dir / "fashion.csv", out, encoder=encoder, show_progress_bar=False)
    scores = evaluate(Recommender.load(out), ["ProductType", "Colour"], k=5, same="Gender",
                      show_progress_bar=False)
    assert scores["p@5_ProductType"] >= 0.746
    assert scores["p@5_Colour"] > 0.334
    assert np.isfinite(scores["p@5_all"])
