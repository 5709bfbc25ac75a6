"""benchmarks/defaults_study.py (issue 22 item 1): its numbers are lookalike's own evaluation, its
paired differences agree with them, and its verdict follows from them."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _study():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("defaults_study", ROOT / "benchmarks" / "defaults_study.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["defaults_study"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


study = _study()


@pytest.fixture(scope="module")
def store_results(tmp_path_factory, store_dir):  # type: ignore[no-untyped-def]
    """The study run on store-demos (main photo and all photos) for the default, the previous
    default and GeM, with the reference recipe: real photos, a whole process."""
    tmp = tmp_path_factory.mktemp("defaults")
    doc = tmp / "quality.md"
    doc.write_text("# Quality\n\n## Other\n\ntext\n")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "defaults_study.py"),
                          "--candidates", "default,previous,gem", "--catalogues", "store-demos,store-demos-all",
                          "--out", str(tmp / "defaults.json"), "--doc", str(doc)],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((tmp / "defaults.json").read_text()), doc.read_text()


@pytest.mark.slow
def test_the_study_scores_what_lookalike_evaluate_scores(store_results, store_dir, tmp_path):
    from lookalike import Recommender, build
    from lookalike.analysis.evaluate import evaluate

    results, _ = store_results
    build(store_dir / "catalog.csv", tmp_path / "idx", images=store_dir / "images", id_column="product_id",
          image_column="images", show_progress_bar=False)
    want = evaluate(Recommender.load(tmp_path / "idx"), ["category"], colour_weight=0.15, show_progress_bar=False)
    got = results["candidates"][0]["catalogues"]["store-demos-all"]
    assert got["queries"] == 25
    assert got["weights"]["0.15"]["p@5 type"] == round(want["p@5_category"], 4)
    ref = results["reference"]["store-demos"]
    assert ref["queries"] == 25 and 0 < ref["scores"]["p@5 type"] <= 1
    assert "store-demos-all" not in results["reference"]  # the reference takes one photo a product


@pytest.mark.slow
def test_paired_differences_match_the_scores_and_the_doc_shows_them(store_results):
    results, doc = store_results
    by_name = {c["name"]: c for c in results["candidates"]}
    for c in results["candidates"]:
        for key, entry in c["catalogues"].items():
            for w, metrics in entry["paired"].items():
                for m, pair in metrics.items():
                    for other in ("default", "previous"):
                        theirs = by_name[other]["catalogues"][key]["weights"][w][m]
                        assert pair[f"vs_{other}"][0] == pytest.approx(entry["weights"][w][m] - theirs, abs=2e-4)
    assert doc.count(study.SECTION) == 1 and "## Other" in doc  # one section, the rest kept
    w = by_name["default"]["catalogues"]["store-demos"]["weights"]
    assert f"| **default** | trim + pad, 256 px, grid2 | 100% | {w['0.0']['p@5 type']:.3f} | " \
           f"{w['0.15']['p@5 type']:.3f} |" in doc
    assert study.verdict(results) in doc
    bg = results["backgrounds"]["store-demos-all"]
    assert bg["photos"] == 97 and 0 < bg["trimmed"] <= 1 and 0.5 < bg["uniform"] <= 1  # these shops shoot on white


def _fake(default: float, previous: float, se: float) -> dict:
    """A one-catalogue result where the default and the previous default score as given."""
    def cand(name: str, p: float, vs: dict) -> dict:
        return {"name": name, "input": name, "model_work": 1.0, "catalogues": {"c": {
            "queries": 1000, "build_s": 1.0, "weights": {"0.15": {"p@5 type": p}},
            "paired": {"0.15": {"p@5 type": vs}}}}}
    return {"machine": {}, "command": "x", "reference": {"c": {"build_s": 9.0, "queries": 1000,
                                                                "loadavg": 1.0, "scores": {"p@5 type": 0.1}}},
            "candidates": [cand("default", default, {"vs_default": [0, 0], "vs_previous": [default - previous, se]}),
                           cand("previous", previous, {"vs_default": [previous - default, se], "vs_previous": [0, 0]})]}


def test_the_verdict_follows_the_numbers():
    tie = study.verdict(_fake(0.5, 0.5, 0.01))
    assert "loses to neither" in tie and "the defaults stay" in tie
    noise = study.verdict(_fake(0.49, 0.5, 0.01))  # one standard error below: noise
    assert "within two standard errors" in noise and "the defaults stay" in noise
    loses = study.verdict(_fake(0.45, 0.5, 0.01))  # five below, and the previous loses nowhere
    assert "beyond noise" in loses and "`previous`" in loses and "call for it as the default" in loses
    both = _fake(0.45, 0.5, 0.01)
    both["reference"]["c"]["scores"]["p@5 type"] = 0.9  # now the previous loses to the reference too
    assert "call for an input chosen per catalogue" in study.verdict(copy.deepcopy(both))


def test_the_clothing_dataset_reads_its_typed_rows_with_photos(tmp_path, store_dir):
    """A clone of the clothing dataset (``images.csv``: image, sender_id, label, kids) becomes a
    catalogue of the rows with a type and a photo, in the reference recipe's columns."""
    import shutil

    import pandas as pd

    src = tmp_path / "clothing-dataset"
    (src / "images").mkdir(parents=True)
    photos = sorted((store_dir / "images").rglob("*.jpg"))[:4]
    for i, p in enumerate(photos):
        shutil.copy(p, src / "images" / f"id{i}.jpg")
    (src / "images.csv").write_text("image,sender_id,label,kids\nid0,1,T-Shirt,False\nid1,2,Not sure,False\n"
                                    "id2,3,Skip,True\nid3,4,Shoes,True\ngone,5,Pants,False\n")
    cat = study.catalogues(tmp_path / "tmp", src)["clothing-5k"]
    table = pd.read_csv(cat.csv)
    assert table["Image"].tolist() == ["id0.jpg", "id3.jpg"]  # untyped rows and the missing photo left out
    assert table["ProductType"].tolist() == ["T-Shirt", "Shoes"] and table["ProductId"].tolist() == [1, 2]
    assert cat.images == src / "images" and cat.labels == ("ProductType",) and cat.same is None
    assert "clothing-5k" not in study.catalogues(tmp_path / "tmp")  # only when its clone is named


def test_merge_puts_a_run_of_other_catalogues_beside_the_results():
    results, added = _fake(0.5, 0.5, 0.01), _fake(0.4, 0.3, 0.02)
    for c in added["candidates"]:
        c["catalogues"] = {"new": c["catalogues"]["c"]}
        c["catalogues"]["new"]["weights"]["0.0"] = c["catalogues"]["new"]["weights"]["0.15"]
    for c in results["candidates"]:
        c["catalogues"]["c"]["weights"]["0.0"] = c["catalogues"]["c"]["weights"]["0.15"]
    added["reference"] = {"new": added["reference"]["c"]}
    added["backgrounds"] = {"new": {"photos": 3, "uniform": 0.0, "trimmed": 0.0}}
    added["command"], added["machine"] = "python benchmarks/defaults_study.py --merge", {"cpu": "AMD EPYC", "cores": 2}
    study.merge(results, added)
    assert list(results["candidates"][0]["catalogues"]) == ["c", "new"] and set(results["reference"]) == {"c", "new"}
    assert results["merged"] == [{"command": added["command"], "machine": added["machine"], "catalogues": ["new"]}]
    assert study.losses(results, "previous", "default") == [("new", "p@5 type", -0.1, 0.02)]
    assert "--merge` (AMD EPYC, 2 cores)" in study.section(results)
    with pytest.raises(SystemExit):  # other candidates can't go beside these
        study.merge(results, {**added, "candidates": added["candidates"][:1]})
