"""The web page's logic with Streamlit's AppTest on the demo index (no browser)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
pytest.importorskip("matplotlib")

from streamlit.testing.v1 import AppTest  # noqa: E402

import lookalike  # noqa: E402

APP = Path(lookalike.__file__).with_name("app.py")


def _start(index: Path | str, monkeypatch) -> AppTest:
    monkeypatch.setenv("LOOKALIKE_INDEX", str(index))
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


def query_title(at: AppTest) -> str:
    [title] = [s.value for s in at.tabs[0].subheader]
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
    assert len(app.tabs[0].get("image")) == 6  # the query and 5 results
    assert app.toggle(key="same_gender").value is True


def test_type_an_id(app, demo_rec):
    app.text_input(key="id_box").input("13683").run()
    assert not app.exception and not app.error
    assert query_title(app) == demo_rec.product("13683")["ProductTitle"]
    got = results(app)
    assert len(got) == 5 and "13683" not in got
    assert {demo_rec.product(r)["Gender"] for r in got} == {"Men"}
    # the page shows what the library answers, in its order
    assert got == demo_rec.similar("13683", k=5, same="Gender").ids
    captions = [c.value for c in app.tabs[0].caption]
    assert any(c.startswith(f"#1 · id {got[0]} · score ") for c in captions)


def test_unknown_id(app):
    app.text_input(key="id_box").input("no-such-id").run()
    assert not app.exception
    assert len(app.error) == 1 and "no-such-id" in app.error[0].value
    assert results(app) == []
    app.text_input(key="id_box").input(" 13683 ").run()  # spaces around an id are fine
    assert not app.error and len(results(app)) == 5


def test_more_results(app, demo_rec):
    app.slider(key="k").set_value(8).run()
    got = results(app)
    assert len(got) == 8
    assert got == demo_rec.similar(demo_rec.ids[0], k=8, same="Gender").ids


def test_click_a_result(app, demo_rec):
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
    # a filter nothing passes: a warning, not an error
    app.toggle(key="same_gender").set_value(True).run()
    app.multiselect(key="filter_Gender").set_value(["Girls"]).run()
    assert results(app) == [] and app.warning and not app.error


def test_browse(app, demo_rec):
    app.radio(key="mode").set_value("Browse").run()
    app.selectbox(key="browse_by").set_value("Women").run()
    within = app.selectbox(key="browse_within")
    assert set(within.options) == {s for s in demo_rec.metadata.query("Gender == 'Women'")["SubCategory"]}
    within.set_value("Shoes").run()
    shown = [b.key.removeprefix("show_") for b in app.button if b.key and b.key.startswith("show_")]
    assert shown and all(demo_rec.product(p)["SubCategory"] == "Shoes" for p in shown)
    app.button(key=f"show_{shown[-1]}").click().run()
    assert app.session_state["query_id"] == shown[-1]
    assert query_title(app) == demo_rec.product(shown[-1])["ProductTitle"]
    women_shoes = demo_rec.metadata.query("Gender == 'Women' and SubCategory == 'Shoes'")["ProductId"].tolist()
    app.selectbox(key="browse_product").set_value(women_shoes[0]).run()
    assert app.session_state["query_id"] == women_shoes[0]
    assert {demo_rec.product(r)["Gender"] for r in results(app)} == {"Women"}


def test_catalogue_tab(app, demo_rec):
    tab = app.tabs[1]
    assert tab.label == "Catalogue"
    metrics = {m.label: m.value for m in tab.metric}
    assert metrics["products"] == "99"
    assert metrics["distinct Gender"] == "4"
    assert metrics["distinct SubCategory"] == str(demo_rec.metadata["SubCategory"].nunique())
    assert len(tab.get("image")) >= 4  # per gender, subcategory per gender, types, colours, ...


def test_bad_index(tmp_path, monkeypatch):
    at = _start(tmp_path / "nowhere", monkeypatch)
    assert len(at.error) == 1 and "Can't open the index" in at.error[0].value


def test_upload_a_photo(app, demo_rec):
    photo = demo_rec.image_path("13683").read_bytes()
    app.radio(key="mode").set_value("By photo").run()
    assert results(app)  # until a photo comes, the last product stays on the page
    app.file_uploader(key="upload").set_value(("shoe.jpg", photo, "image/jpeg")).run()
    assert not app.exception and not app.error
    assert "Your photo" in [s.value for s in app.tabs[0].subheader]
    got = results(app)
    assert got == demo_rec.similar(image=photo, k=5).ids
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


def test_launch_checks_first(tmp_path, monkeypatch):
    from lookalike.errors import IndexFormatError, MissingDependencyError
    from lookalike.launch import APP_SCRIPT, app_command, run_app

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
