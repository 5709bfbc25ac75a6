"""Letting the shop steer (issue 21): boosts, query defaults, caps, diversity, pinned and blocked
pairs, explanations and a region of a photo, on store-demos' real products and prices; the
back ends' agreement is checked in tests/test_products.py (test_every_back_end_steers_...)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import IndexWriter, Recommender
from lookalike.errors import InvalidQueryError, UnknownProductError
from lookalike.folder.manifest import QueryDefaults, Rule
from lookalike.search.steering import mmr, parse_boost


@pytest.fixture
def index(tmp_path, store_index) -> Path:
    out = tmp_path / "index"
    shutil.copytree(store_index, out)
    return out


def _price(rec, pid):
    return float(rec.product(pid)["price"])


def _brute(rec, pid, score_of, k):
    """Every product's plain score against ``pid``, boosted by ``score_of``, best first."""
    every = rec.similar(pid, k=len(rec) - 1, collapse_duplicates=False)
    scored = sorted(((score_of(r.id, r.score), r.id) for r in every), key=lambda t: (-t[0], t[1]))
    return [p for _, p in scored[:k]], [s for s, _ in scored[:k]]


def test_boosts_rank_exactly_as_a_brute_force_of_the_formula(store_index):
    rec = Recommender.load(store_index)
    for pid in rec.products[::4]:
        got = rec.similar(pid, k=6, boost=["price:*0.01", "platform=prestashop:+0.3"], collapse_duplicates=False)
        ids, scores = _brute(rec, pid, lambda p, s: s * (1 + 0.01 * _price(rec, p))
                             + (0.3 if rec.product(p)["platform"] == "prestashop" else 0.0), 6)
        assert np.allclose([r.score for r in got], scores, atol=1e-5), pid
        assert got.ids == ids
    # a boost that reaches products far below the plain top k: the search fetches on until it is sure
    pid = rec.products[0]
    cheap = rec.similar(pid, k=3, boost="price<30:+1", collapse_duplicates=False)
    assert all(_price(rec, p) < 30 for p in cheap.ids)
    assert cheap.ids == _brute(rec, pid, lambda p, s: s + (1.0 if _price(rec, p) < 30 else 0.0), 3)[0]


def test_boost_syntax_and_errors(store_index):
    assert str(parse_boost("in_stock=yes:+0.05")) == "in_stock=yes:+0.05"
    assert parse_boost("price:-0.5").weight == -0.5 and parse_boost("price:*2").op == "*"
    assert parse_boost("Colour:Black:*0.9").condition.values == ("Black",)
    rec = Recommender.load(store_index)
    for bad, says in (("price", "a boost takes"), ("nope:+1", "unknown column"), ("name:+1", "holds no numbers"),
                      ("price:+x", "a boost takes")):
        with pytest.raises(InvalidQueryError, match=says):
            rec.similar(rec.products[0], boost=bad)


def test_explanations_add_up_and_name_each_part(store_index):
    rec = Recommender.load(store_index)
    res = rec.similar(rec.products[3], k=5, explain=True, boost=["price:*0.001", "platform=opencart:+0.05"])
    for r in res:
        assert set(r.explain) == {"shape", "colour", "boost price:*0.001", "boost platform=opencart:+0.05"}
        assert sum(r.explain.values()) == pytest.approx(r.score, abs=1e-5)
        assert r.explain["boost platform=opencart:+0.05"] == (0.05 if r.metadata["platform"] == "opencart" else 0)
    plain = rec.similar(rec.products[3], k=5, explain=True, colour_weight=0.0)
    assert all(r.explain["colour"] == 0 and r.explain["shape"] == pytest.approx(r.score, abs=1e-6) for r in plain)
    assert "explain" in res.to_dict()["results"][0] and "explain" not in rec.similar(rec.products[3]).to_dict()[
        "results"][0]
    table = rec.export(k=3, ids=rec.products[:2], explain=True)
    assert {"shape", "colour"} <= set(table.columns)
    assert np.allclose(table["shape"] + table["colour"], table["score"], atol=1e-5)


def test_max_per_caps_a_column_and_diversity_spreads_the_list(store_index):
    rec = Recommender.load(store_index)
    pid = rec.products[0]
    capped = rec.similar(pid, k=6, max_per="category=1")
    cats = [r.metadata["category"] for r in capped]
    assert len(cats) == len(set(cats)) and len(capped) == min(6, len({rec.product(p)["category"] for p in rec.products}) - 0)
    with pytest.raises(InvalidQueryError, match="max-per"):
        rec.similar(pid, max_per="category=0")
    plain = rec.similar(pid, k=5)
    assert rec.similar(pid, k=5, diversity=0.0).ids == plain.ids
    spread = rec.similar(pid, k=5, diversity=0.9)
    assert spread.ids[0] == plain.ids[0] and spread.ids != plain.ids

    def likeness(ids):
        v = np.stack([rec.vectors[rec.row(p)] for p in ids])
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return float((v @ v.T)[np.triu_indices(len(ids), 1)].mean())
    assert likeness(spread.ids) < likeness(plain.ids)
    # mmr itself: with δ=1 after the first, the next is the least like it
    sim = np.array([[1, .9, .1], [.9, 1, .2], [.1, .2, 1]])
    assert mmr(np.array([1.0, .95, .5]), sim, 2, 0.0) == [0, 1]
    assert mmr(np.array([1.0, .95, .5]), sim, 2, 1.0) == [0, 2]


def test_rules_pin_block_are_a_generation_and_refuse_unknown_products(index):
    rec = Recommender.load(index)
    a = rec.products[0]
    plain = rec.similar(a, k=5)
    far = rec.similar(a, k=len(rec) - 1).ids[-1]  # the least alike
    w = IndexWriter.open(index)
    gen = rec.generation
    now = w.change_rules(add=[Rule("pin", far, a, 2), Rule("block", plain.ids[0], a), Rule("block", plain.ids[1])])
    assert now.generation == gen + 1 and len(now.rules) == 3
    rec = Recommender.load(index)
    got = rec.similar(a, k=5)
    assert got.ids[1] == far and got.items[1].rule == "pinned at rank 2"
    assert plain.ids[0] not in got.ids and plain.ids[1] not in got.ids
    assert plain.ids[1] not in rec.similar(rec.products[5], k=24).ids  # blocked everywhere
    assert plain.ids[0] in rec.similar(rec.products[5], k=24).ids or plain.ids[0] == rec.products[5]
    assert rec.similar(a, k=5, rules=False).ids == plain.ids
    assert rec.export(k=5, ids=[a])["id"].tolist() == got.ids
    # a pinned product must pass the query's filters
    price = _price(rec, far)
    assert far not in rec.similar(a, k=5, where=f"price<{price}").ids
    with pytest.raises(UnknownProductError):
        w.change_rules(add=[Rule("pin", "no-such", a)])
    with pytest.raises(InvalidQueryError):
        w.change_rules(remove=[Rule("pin", plain.ids[3], a)])
    assert len(Recommender.load(index).rules) == 3  # refused changes changed nothing
    w.change_rules(remove=[Rule("block", plain.ids[1])])
    assert len(Recommender.load(index).rules) == 2


def test_query_defaults_apply_unless_overridden_and_survive_changes_and_rebuilds(index, store_dir):
    w = IndexWriter.open(index)
    w.set_defaults(QueryDefaults(where=("price<200",), boost=("platform=prestashop:+0.2",)), colour_weight=0.3)
    rec = Recommender.load(index)
    pid = rec.products[0]
    got = rec.similar(pid, k=8)
    assert all(_price(rec, p) < 200 for p in got.ids) and rec.colour_weight == 0.3
    assert got.query["boost"] == ["platform=prestashop:+0.2"]
    wider = rec.similar(pid, k=24, where="price<1000")  # the query's condition on price replaces the default's
    assert any(_price(rec, p) >= 200 for p in wider.ids)
    assert rec.similar(pid, k=8, defaults=False).query.get("boost") is None
    with pytest.raises(InvalidQueryError):
        w.set_defaults(QueryDefaults(where=("nope=1",)))
    # a live change keeps them; so does a rebuild of the same folder
    w.remove([rec.products[-1]])
    assert Recommender.load(index).query_defaults.where == ("price<200",)
    from lookalike import build

    build(store_dir / "catalog.csv", index, images=store_dir / "images", id_column="product_id",
          image_column="image", show_progress_bar=False, update=True)
    assert Recommender.load(index).query_defaults.boost == ("platform=prestashop:+0.2",)


def test_a_box_queries_with_a_region_of_the_photo(store_index, store_dir, tmp_path):
    rec = Recommender.load(store_index)
    a, b = rec.products[0], rec.products[10]
    pa, pb = Image.open(rec.image_path(a)).convert("RGB"), Image.open(rec.image_path(b)).convert("RGB")
    side = 300
    collage = Image.new("RGB", (2 * side, side), "white")
    collage.paste(pa.resize((side, side)), (0, 0))
    collage.paste(pb.resize((side, side)), (side, 0))
    path = tmp_path / "collage.jpg"
    collage.save(path, quality=95)
    left = rec.similar(image=path, k=1, box=(0, 0, side, side), collapse_duplicates=False)
    right = rec.similar(image=path, k=1, box="0.5,0,0.5,1", collapse_duplicates=False)
    assert left.ids == [a] and right.ids == [b]
    assert left.query["box"] == [0, 0, side, side]
    # the region goes through the photo path as a whole photo would: the cropped file scores the same
    collage.crop((side, 0, 2 * side, side)).save(tmp_path / "right.png")
    whole = rec.similar(image=tmp_path / "right.png", k=3, collapse_duplicates=False)
    assert whole.ids == rec.similar(image=path, k=3, box="0.5,0,0.5,1", collapse_duplicates=False).ids
    for bad in ("1,2,3", "0,0,5000,10", "0,0,2,2", "a,b,c,d"):
        with pytest.raises(InvalidQueryError):
            rec.similar(image=path, box=bad)
    with pytest.raises(InvalidQueryError, match="region of a photo"):
        rec.similar(a, box=(0, 0, 10, 10))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lookalike", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_cli_settings_rules_and_steered_similar(index):
    rec = Recommender.load(index)
    a, b = rec.products[0], rec.products[-1]
    run = _cli("rules", index, "pin", "--for", a, "--show", b, "--rank", "1")
    assert run.returncode == 0, run.stderr
    assert f"pin {b} at rank 1 for {a}" in _cli("rules", index, "list").stdout
    bad = _cli("rules", index, "block", "--for", a, "--hide", "no-such")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("lookalike: error: unknown product")
    run = _cli("settings", index, "--where", "price<500", "--max-per", "platform=3", "--format", "json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["where"] == ["price<500"]
    out = _cli("similar", index, "--id", a, "-k", "4", "--explain", "--boost", "price:*0.001", "--format", "json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["results"][0]["id"] == b and body["results"][0]["rule"] == "pinned at rank 1"
    assert all(abs(sum(r["explain"].values()) - r["score"]) < 1e-4 for r in body["results"])
    assert body["query"]["max_per"] == {"platform": 3}
    table = _cli("similar", index, "--id", a, "-k", "3", "--no-rules", "--no-defaults")
    assert table.returncode == 0 and "pinned" not in table.stdout
    assert _cli("settings", index, "--clear").returncode == 0
    assert "(none)" in _cli("settings", index).stdout


def test_http_settings_rules_and_steered_queries(index, store_dir):
    from fastapi.testclient import TestClient

    from lookalike.server.app import create_app

    token = {"Authorization": "Bearer tok"}
    rec = Recommender.load(index)
    a, b = rec.products[0], rec.products[-1]
    with TestClient(create_app(index, write_token="tok")) as c:
        assert c.post("/rules", json={"kind": "pin", "for": a, "show": b}).status_code == 401
        r = c.post("/rules", json={"kind": "pin", "for": a, "show": b, "rank": 1}, headers=token)
        assert r.status_code == 200, r.text
        assert c.post("/rules", json={"kind": "pin", "for": a, "show": "zz"}, headers=token).status_code == 404
        got = c.get(f"/products/{a}/similar", params={"k": 3, "explain": "true", "boost": "price:*0.001"}).json()
        assert got["results"][0]["id"] == b and got["results"][0]["rule"] == "pinned at rank 1"
        assert all(abs(sum(x["explain"].values()) - x["score"]) < 1e-4 for x in got["results"])
        r = c.put("/settings", json={"where": ["price<100"], "max_per": ["platform=2"]}, headers=token)
        assert r.status_code == 200, r.text
        assert c.get("/settings").json()["where"] == ["price<100"]
        got = c.get(f"/products/{a}/similar", params={"k": 5, "rules": "false"}).json()
        assert all(float(x["price"]) < 100 for x in got["results"])
        assert c.put("/settings", json={"boost": ["bad"]}, headers=token).status_code == 422
        assert c.delete("/rules", params={"kind": "pin", "for": a, "show": b}, headers=token).json()["rules"] == []
        body = c.post("/similar", json={"ids": [a], "k": 3, "boost": ["platform=prestashop:+0.5"], "defaults": False})
        assert body.status_code == 200 and body.json()["results"][0]["platform"] == "prestashop"
        photo = rec.image_path(rec.products[4]).read_bytes()
        r = c.post("/similar", params={"k": 1}, files={"image": ("p.jpg", photo, "image/jpeg")},
                   data={"box": "0,0,1,1"})
        assert r.status_code == 200 and r.json()["query"]["box"] == [0, 0, 1, 1]
        assert c.get(f"/products/{a}/similar", params={"box": "0,0,1,1"}).status_code in (400, 422)
