"""The web page's logic with Streamlit's AppTest on real indexes (no browser): the demo sample,
store-demos (prices) and a copy of the demo for the pin and block rules."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
pytest.importorskip("matplotlib")

from streamlit.testing.v1 import AppTest  # noqa: E402

import lookalike  # noqa: E402
from tests.conftest import STORE_CREDIT  # noqa: E402

APP = Path(lookalike.__file__).with_name("app.py")


def _start(index: Path | str, monkeypatch, *, writes: bool = False, credit: str | None = None) -> AppTest:
    monkeypatch.setenv("LOOKALIKE_INDEX", str(index))
    monkeypatch.delenv("LOOKALIKE_APP_WRITES", raising=False)
    monkeypatch.delenv("LOOKALIKE_APP_CREDIT", raising=False)
    if writes:
        monkeypatch.setenv("LOOKALIKE_APP_WRITES", "1")
    if credit is not None:
        monkeypatch.setenv("LOOKALIKE_APP_CREDIT", credit)
    at = AppTest.from_file(str(APP), default_timeout=90)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def app(demo_index, monkeypatch) -> AppTest:
    return _start(demo_index, monkeypatch)


def results(at: AppTest) -> list[str]:
    """Ids of the products in the results grid, in order."""
    return [b.key.removeprefix("more_") for b in at.button if b.key and b.key.startswith("more_")]


def tiles(at: AppTest) -> list[str]:
    return [b.key.removeprefix("show_") for b in at.button if b.key and b.key.startswith("show_")]


def card_text(at: AppTest) -> list[str]:
    """The text of each card (title and lines), tags stripped."""
    return [re.sub(r"<[^>]+>", " ", m.value) for m in at.markdown if 'class="lk-title"' in m.value]


def query_title(at: AppTest) -> str:
    [title] = [s.value for s in at.subheader]
    return title


def test_default_page(app, demo_rec):
    first = demo_rec.ids[0]
    assert app.session_state["query_id"] == first
    assert query_title(app) == demo_rec.product(first)["ProductTitle"]
    got = results(app)
    assert len(got) == 5
    gender = demo_rec.product(first)["Gender"]
    assert {demo_rec.product(r)["Gender"] for r in got} == {gender}
    assert not app.error
    assert len(app.get("image")) == 6  # the query and 5 results
    assert app.toggle(key="same_gender").value is True
    # scores are explained on each card, and the parts add up to the score
    res = demo_rec.similar(first, k=5, same="Gender", explain=True)
    for text, r in zip(card_text(app), res, strict=True):
        assert f"#{r.rank} · id {r.id} · score {r.score:.3f}" in text and "shape " in text
        assert sum(r.explain.values()) == pytest.approx(r.score, abs=1e-5)
    assert not [b for b in app.button if b.key and b.key.startswith(("pin_", "block_"))]  # read-only
    assert not [c for c in app.caption if c.value.startswith("Photos")]  # the demo fixture records no credit


def test_type_an_id(app, demo_rec):
    app.text_input(key="id_box").input("13683").run()
    assert not app.exception and not app.error
    assert query_title(app) == demo_rec.product("13683")["ProductTitle"]
    got = results(app)
    assert len(got) == 5 and "13683" not in got
    assert {demo_rec.product(r)["Gender"] for r in got} == {"Men"}
    # the page shows what the library answers, in its order
    assert got == demo_rec.similar("13683", k=5, same="Gender").ids
    assert f"#1 · id {got[0]} · score " in card_text(app)[0]


def test_unknown_id(app):
    app.text_input(key="id_box").input("no-such-id").run()
    assert not app.exception
    assert len(app.error) == 1 and "no-such-id" in app.error[0].value
    assert results(app) == []
    app.text_input(key="id_box").input(" 13683 ").run()  # spaces around an id are fine
    assert not app.error and len(results(app)) == 5


def test_more_results_and_a_click(app, demo_rec):
    app.slider(key="k").set_value(8).run()
    assert results(app) == demo_rec.similar(demo_rec.ids[0], k=8, same="Gender").ids
    app.slider(key="k").set_value(5).run()
    app.text_input(key="id_box").input("13683").run()
    second = results(app)[1]
    app.button(key=f"more_{second}").click().run()
    assert not app.exception
    assert app.session_state["query_id"] == second
    assert app.text_input(key="id_box").value == second
    assert query_title(app) == demo_rec.product(second)["ProductTitle"]
    assert results(app) == demo_rec.similar(second, k=5, same="Gender").ids


def test_same_gender_off_and_filters(app, demo_rec):
    app.text_input(key="id_box").input("13683").run()
    app.toggle(key="same_gender").set_value(False).run()
    assert results(app) == demo_rec.similar("13683", k=5).ids
    app.multiselect(key="filter_Colour").set_value(["Black", "White"]).run()
    got = results(app)
    assert got == demo_rec.similar("13683", k=5, where={"Colour": ["Black", "White"]}).ids
    assert {demo_rec.product(r)["Colour"] for r in got} <= {"Black", "White"}
    # only few-valued columns are filters: never the titles, the ids or the photos
    keys = {w.key for w in app.multiselect}
    assert "filter_Gender" in keys and not keys & {"filter_ProductTitle", "filter_ProductId", "filter_Image"}
    # a filter nothing passes: a warning, not an error
    app.toggle(key="same_gender").set_value(True).run()
    app.multiselect(key="filter_Gender").set_value(["Girls"]).run()
    assert results(app) == [] and app.warning and not app.error


def test_less_like_this(app, demo_rec):
    app.text_input(key="id_box").input("13683").run()
    first = results(app)[0]
    app.button(key=f"less_{first}").click().run()
    assert results(app) == demo_rec.similar("13683", k=5, same="Gender", negative_ids=[first]).ids
    assert first not in results(app)
    app.button(key="clear_negatives").click().run()
    assert results(app)[0] == first


def test_browse_by_search_and_steps(app, demo_rec):
    meta = demo_rec.product_metadata
    app.radio(key="mode").set_value("Browse").run()
    assert len(tiles(app)) == min(18, len(demo_rec))
    app.number_input(key="browse_page").set_value(3).run()
    assert tiles(app) == demo_rec.product_metadata.ProductId.tolist()[36:54]
    app.selectbox(key="step_Gender").set_value("Women").run()
    assert app.number_input(key="browse_page").value == 1  # other products: from their first page
    step = app.selectbox(key="step_SubCategory")
    assert set(step.options) - {"all"} == set(meta[meta.Gender == "Women"].SubCategory)
    step.set_value("Shoes").run()
    women_shoes = meta[(meta.Gender == "Women") & (meta.SubCategory == "Shoes")].ProductId.tolist()
    assert tiles(app) == women_shoes[:18]
    app.text_input(key="browse_text").input("black").run()
    black = [p for p in women_shoes if "black" in " ".join(demo_rec.product(p).values()).lower()]
    assert black and tiles(app) == black
    app.button(key=f"show_{black[-1]}").click().run()
    assert app.session_state["query_id"] == black[-1]
    assert query_title(app) == demo_rec.product(black[-1])["ProductTitle"]
    assert {demo_rec.product(r)["Gender"] for r in results(app)} == {"Women"}
    app.text_input(key="browse_text").input("no-such-word").run()
    assert tiles(app) == [] and app.info


def test_catalogue_view_has_no_sidebar(app, demo_rec):
    assert app.sidebar.slider  # the results' settings, on the recommendations view
    app.segmented_control(key="view").set_value("Catalogue").run()
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["products"] == "99"
    assert metrics["distinct Gender"] == "4"
    assert metrics["distinct SubCategory"] == str(demo_rec.metadata["SubCategory"].nunique())
    assert len(app.get("image")) >= 4  # per gender, subcategory per gender, types, colours, ...
    assert not app.sidebar.slider and not app.sidebar.multiselect and not app.sidebar.toggle
    assert results(app) == []


def test_bad_index(tmp_path, monkeypatch):
    at = _start(tmp_path / "nowhere", monkeypatch)
    assert len(at.error) == 1 and "Can't open the index" in at.error[0].value


def test_upload_a_photo_and_a_region(app, demo_rec):
    photo = demo_rec.image_path("13683").read_bytes()
    app.radio(key="mode").set_value("By photo").run()
    assert results(app)  # until a photo comes, the last product stays on the page
    app.file_uploader(key="upload").set_value(("shoe.jpg", photo, "image/jpeg")).run()
    assert not app.exception and not app.error
    assert "Your photo" in [s.value for s in app.subheader]
    assert not [t for t in app.toggle if t.key == "same_gender"]  # it acts on product queries only
    got = results(app)
    assert got == demo_rec.similar(image=photo, k=5).ids
    app.slider(key="box_x").set_value((10, 60)).run()
    app.slider(key="box_y").set_value((20, 90)).run()
    assert results(app) == demo_rec.similar(image=photo, k=5, box=(0.1, 0.2, 0.5, 0.7)).ids
    assert any("outlined region" in c.value for c in app.caption)
    # a click on a result leaves the photo for that product
    app.button(key=f"more_{got[0]}").click().run()
    assert app.radio(key="mode").value == "By id"
    assert query_title(app) == demo_rec.product(got[0])["ProductTitle"]


def test_upload_not_a_photo(app):
    app.radio(key="mode").set_value("By photo").run()
    app.file_uploader(key="upload").set_value(("shoe.jpg", b"not a jpeg at all", "image/jpeg")).run()
    assert not app.exception
    assert len(app.error) == 1 and "Can't use this photo" in app.error[0].value
    assert results(app) == []


def test_store_prices_as_a_range_and_steering(store_index, monkeypatch):
    from lookalike import Recommender

    rec = Recommender.load(store_index)
    at = _start(store_index, monkeypatch)
    assert at.main.caption[-1].value == STORE_CREDIT  # the index's own credit, under the photos
    keys = {w.key for w in at.multiselect}
    assert keys == {"filter_platform", "filter_category"}  # name: near-unique, searched not filtered
    price = at.slider(key="range_price")
    assert price.value == (16.0, 2000.0)  # whole numbers around 16.51..2000
    first = rec.ids[0]
    price.set_value((50.0, 300.0)).run()
    want = rec.similar(first, k=5, where=["price=50..300"])
    assert results(at) == want.ids and all(50 <= float(r.metadata["price"]) <= 300 for r in want)
    at.text_area(key="boosts").input("price:*0.002\nplatform=prestashop:+0.1").run()
    at.selectbox(key="max_per_col").set_value("category").run()
    at.number_input(key="max_per_n").set_value(1).run()
    at.slider(key="diversity").set_value(0.3).run()
    at.slider(key="colour_weight").set_value(0.5).run()
    want = rec.similar(first, k=5, where=["price=50..300"], boost=["price:*0.002", "platform=prestashop:+0.1"],
                       max_per={"category": 1}, diversity=0.3, colour_weight=0.5, explain=True)
    assert not at.error and results(at) == want.ids
    assert len({rec.product(r)["category"] for r in want.ids}) == len(want)
    text = card_text(at)
    assert all("price:*0.002" in t for t in text)
    at.text_area(key="boosts").input("price:**2").run()
    assert at.error and "boost" in at.error[0].value and not at.exception


def test_photo_credit_given_or_none(store_index, monkeypatch):
    at = _start(store_index, monkeypatch, credit="Photos: someone else")
    assert at.main.caption[-1].value == "Photos: someone else"
    at = _start(store_index, monkeypatch, credit="")
    assert STORE_CREDIT not in [c.value for c in at.caption]


def test_a_rebuild_keeps_the_photo_credit_and_the_cli_passes_it_on(store_dir, encoder, tmp_path, monkeypatch):
    from lookalike import Recommender, build
    from lookalike.cli import _parser

    out = tmp_path / "index"
    kw = dict(images=store_dir / "images", id_column="product_id", image_column="image", encoder=encoder,
              show_progress_bar=False)
    build(store_dir / "catalog.csv", out, photo_credit="Photos: the shops", **kw)
    build(store_dir / "catalog.csv", out, update=True, **kw)  # no credit given: the index's stays
    assert Recommender.load(out).settings.catalog.photo_credit == "Photos: the shops"
    assert _start(out, monkeypatch).main.caption[-1].value == "Photos: the shops"
    args = _parser().parse_args(["app", str(out), "--photo-credit", "", "--allow-writes"])
    assert (args.photo_credit, args.allow_writes) == ("", True)
    args = _parser().parse_args(["app", str(out)])
    assert (args.photo_credit, args.allow_writes) == (None, False)
    assert _parser().parse_args(["build", "c.csv", "--out", "o", "--photo-credit", "X"]).photo_credit == "X"


def test_pin_and_block_when_writes_are_allowed(demo_index, tmp_path, monkeypatch):
    from lookalike import Recommender

    index = tmp_path / "index"
    shutil.copytree(demo_index, index)
    at = _start(index, monkeypatch, writes=True)
    at.text_input(key="id_box").input("13683").run()
    before = results(at)
    at.button(key=f"pin_{before[3]}").click().run()
    assert not at.exception and not at.error
    got = results(at)
    assert got[0] == before[3] and "pinned at rank 1" in card_text(at)[0]
    rec = Recommender.load(index)
    assert got == rec.similar("13683", k=5, same="Gender").ids
    at.button(key=f"block_{got[1]}").click().run()
    assert got[1] not in results(at)
    assert [str(r) for r in Recommender.load(index).rules] == [f"pin {before[3]} at rank 1 for 13683",
                                                              f"block {got[1]} for 13683"]
    at.button(key="unrule_0").click().run()
    at.button(key="unrule_0").click().run()
    assert Recommender.load(index).rules == () and results(at) == before


def test_launch_checks_first(tmp_path, monkeypatch):
    from lookalike.errors import IndexFormatError, MissingDependencyError
    from lookalike.launch import APP_SCRIPT, app_command, app_environment, run_app

    with pytest.raises(IndexFormatError):
        run_app(tmp_path / "nowhere", port=1)
    monkeypatch.setitem(__import__("sys").modules, "streamlit", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'lookalike\[ui\]'"):
        run_app(tmp_path, port=1)
    cmd = app_command("IDX", host="127.0.0.1", port=8765)
    assert cmd[1:5] == ["-m", "streamlit", "run", str(APP_SCRIPT)] and APP_SCRIPT == APP
    assert cmd[-2:] == ["--", "IDX"]
    flags = dict(zip(cmd[5:-2:2], cmd[6:-2:2], strict=True))
    assert flags["--server.port"] == "8765" and flags["--server.headless"] == "true"
    assert flags["--browser.gatherUsageStats"] == "false"
    assert app_environment("IDX") == {"LOOKALIKE_INDEX": "IDX"}
    assert app_environment("IDX", photo_credit="", allow_writes=True) == {
        "LOOKALIKE_INDEX": "IDX", "LOOKALIKE_APP_CREDIT": "", "LOOKALIKE_APP_WRITES": "1"}
