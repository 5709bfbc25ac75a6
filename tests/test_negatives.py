""""Less like this" (issue 21, item 1): negative examples move the query away from their look
(Qdrant's average-vector strategy) and are never listed; in the library, the CLI, the API and
the page, on the bundled demo."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lookalike.cli import main
from lookalike.errors import UnknownProductError
from lookalike.folder.rows import l2_normalize, searchable


def _brute(rec, pid: str, away: list[str], k: int) -> list[tuple[str, float]]:
    """The average-vector query by hand: q = p + (p − n̄) per unit part, scored against every row."""
    def look(p):
        rows = rec.rows(p)
        return l2_normalize(np.asarray(rec.vectors)[rows]).mean(0), l2_normalize(np.asarray(rec.colour)[rows]).mean(0)

    (s, c), neg = look(pid), [look(p) for p in away]
    s = 2 * s - np.mean([x for x, _ in neg], axis=0)
    c = 2 * c - np.mean([y for _, y in neg], axis=0)
    w = rec.colour_weight
    q = np.concatenate([(1 - w) * l2_normalize(s), w * l2_normalize(c)])
    scores = searchable(np.asarray(rec.vectors), np.asarray(rec.colour), rec.metric) @ q
    twins = {m for g in rec.duplicates(near=False) if set(g) & {pid, *away} for m in g}
    out = sorted(((float(v), i) for v, i in zip(scores, rec.ids) if i not in {pid, *away, *twins}), reverse=True)
    return [(i, v) for v, i in out[:k]]


def test_a_negative_moves_the_query_as_documented_and_is_never_listed(demo_rec):
    pid = demo_rec.products[10]
    plain = demo_rec.similar(pid, k=8)
    away = [plain.ids[0], plain.ids[3]]
    got = demo_rec.similar(pid, k=8, negative_ids=away)
    assert not set(away) & set(got.ids)
    want = _brute(demo_rec, pid, away, 8)
    assert got.ids == [i for i, _ in want]
    assert np.allclose([r.score for r in got], [v for _, v in want], atol=1e-5)
    assert got.query["negative_ids"] == away


def test_negatives_lower_the_share_of_results_like_them(demo_rec):
    """Over every query: with a negative of another colour, fewer results of that colour."""
    before, after = [], []
    for pid in demo_rec.products:
        mine = demo_rec.product(pid)["Colour"]
        first = demo_rec.similar(pid, k=6)
        other = next((r for r in first if r.metadata["Colour"] != mine), None)
        if other is None:
            continue
        colour = other.metadata["Colour"]
        before.append(np.mean([r.metadata["Colour"] == colour for r in first if r.id != other.id][:5]))
        after.append(np.mean([r.metadata["Colour"] == colour for r in demo_rec.similar(
            pid, k=5, negative_ids=[other.id])]))
    assert len(before) > 50 and np.mean(after) < np.mean(before)


def test_photo_queries_take_negatives_and_unknown_ones_are_refused(demo_rec):
    from lookalike import demo_catalog

    photo = demo_catalog().parent / "images" / demo_rec.product(demo_rec.products[4])["Image"]
    plain = demo_rec.similar(image=photo, k=5)
    got = demo_rec.similar(image=photo, k=5, negative_ids=[plain.ids[0]], negative_images=[photo])
    assert plain.ids[0] not in got.ids and got.query["negative_images"] == 1
    with pytest.raises(UnknownProductError):
        demo_rec.similar(demo_rec.products[0], negative_ids=["no-such-product"])


def test_cli_and_api_say_less_like_this(demo_index, demo_rec, capsys, restore_logging):
    pid = demo_rec.products[10]
    away = demo_rec.similar(pid, k=1).ids[0]
    code = main(["similar", str(demo_index), "--id", pid, "--not", away, "-k", "5", "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["id"] for r in out["results"]] == demo_rec.similar(pid, k=5, negative_ids=[away]).ids
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lookalike.server import create_app

    with TestClient(create_app(demo_index)) as c:
        got = c.get(f"/products/{pid}/similar", params={"k": 5, "negative_ids": away}).json()
        assert [r["id"] for r in got["results"]] == [r["id"] for r in out["results"]]
        posted = c.post("/similar", json={"ids": [pid], "k": 5, "negative_ids": [away]}).json()
        assert [r["id"] for r in posted["results"]] == [r["id"] for r in out["results"]]
        assert c.get(f"/products/{pid}/similar", params={"negative_ids": "nope"}).status_code == 404


def test_the_page_has_less_like_this_on_each_card(demo_index, demo_rec, monkeypatch):
    pytest.importorskip("streamlit")
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    import lookalike

    monkeypatch.setenv("LOOKALIKE_INDEX", str(demo_index))
    at = AppTest.from_file(str(Path(lookalike.__file__).with_name("app.py")), default_timeout=90)
    at.run()
    shown = [b.key.removeprefix("more_") for b in at.button if b.key and b.key.startswith("more_")]
    at.button(key=f"less_{shown[0]}").click().run()
    assert not at.exception
    now = [b.key.removeprefix("more_") for b in at.button if b.key and b.key.startswith("more_")]
    pid = at.session_state["query_id"]
    assert shown[0] not in now
    assert now == demo_rec.similar(pid, k=len(now), same=["Gender"], negative_ids=[shown[0]]).ids
    assert any("less like" in c.value for c in at.caption)
    at.button(key="clear_negatives").click().run()
    assert [b.key.removeprefix("more_") for b in at.button if b.key and b.key.startswith("more_")] == shown
