"""The shop-floor web page (extra: ui): ``lookalike app INDEX`` or ``streamlit run app.py -- INDEX``.

It holds no recommendation logic of its own: it finds the query (an id, a browsed product
or an uploaded photo), calls :meth:`lookalike.Recommender.similar`, and shows what comes
back. Photos are read from the index's local files (``Recommender.image_path``), never
fetched from a URL in the catalogue. The index folder comes from ``LOOKALIKE_INDEX`` or
the script's first argument.

Page state (``st.session_state``): ``query_id`` is the product being shown; the id box,
the browse controls and the "More like this" buttons only set it.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from lookalike import LookalikeError, Recommender, UnknownProductError, __version__
from lookalike.analysis.stats import catalog_stats, grouping_columns, make_charts

#: the results slider's range and default (the reference showed 5)
MAX_SHOWN = 24
DEFAULT_SHOWN = 5
#: results per row of the grid, browse thumbnails per page
GRID = 5
BROWSE_GRID = 6
BROWSE_PAGE = 12
THUMB = 240
LARGE = 480
MODES = ("By id", "Browse", "By photo")
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]


def index_path() -> str | None:
    """``LOOKALIKE_INDEX``, else the first script argument (``streamlit run app.py -- INDEX``)."""
    env = os.environ.get("LOOKALIKE_INDEX", "").strip()
    if env:
        return env
    return sys.argv[1] if len(sys.argv) > 1 else None


# -- cached data (keyed by the index folder) ---------------------------------------------
@st.cache_resource(show_spinner="Loading the index…")
def load_recommender(path: str) -> Recommender:
    return Recommender.load(path)


@st.cache_data(show_spinner=False)
def page_facts(path: str) -> dict[str, Any]:
    """What the page needs to know about the catalogue's columns (computed once per index)."""
    rec = load_recommender(path)
    table = rec.product_metadata[rec.columns]
    stats = catalog_stats(table)
    n = len(rec)
    filters: dict[str, list[str]] = {}
    for col in rec.columns:
        if col == rec.id_column:
            continue
        counts = table[col].astype(str).value_counts()
        if len(counts) < n or n <= 1:  # a column unique per row (ids, photo names) is no filter
            filters[col] = [str(v) for v in counts.index if str(v).strip()]
    title = next((c for c in rec.columns if c.casefold() in ("producttitle", "title", "name", "productname")), None)
    if title is None:
        title = next((c for c in rec.columns if "title" in c.casefold() or "name" in c.casefold()), None)
    gender = next((c for c in rec.columns if c.casefold() == "gender"), None)
    return {
        "stats": stats,
        "filters": filters,
        "title": title,
        "gender": gender,
        "describe": [c for c in grouping_columns(table) if c != title],
    }


@st.cache_data(show_spinner="Drawing the charts…")
def chart_pngs(path: str) -> dict[str, bytes]:
    rec = load_recommender(path)
    figs = make_charts(rec.product_metadata[rec.columns], stats=page_facts(path)["stats"])
    out = {}
    for name, fig in figs.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        out[name] = buf.getvalue()
    return out


def photo_preview(photo: str | bytes, size: int) -> bytes:
    """The photo fitted (shrunk or enlarged) onto a white square, as JPEG; raises ImageError."""
    from PIL import Image

    from lookalike.reading.images import open_image

    img = open_image(photo, draft=size)
    scale = size / max(img.width, img.height)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
    tile = Image.new("RGB", (size, size), "white")
    tile.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    buf = io.BytesIO()
    tile.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


@st.cache_data(max_entries=4096, show_spinner=False)
def thumbnail(photo: str, size: int) -> bytes | None:
    """A catalogue photo as :func:`photo_preview` (None when it can't be read)."""
    from lookalike.errors import ImageError

    try:
        return photo_preview(photo, size)
    except ImageError:
        return None


# -- state --------------------------------------------------------------------------------
@dataclass
class Settings:
    k: int = DEFAULT_SHOWN
    same: list[str] = field(default_factory=list)
    where: dict[str, list[str]] = field(default_factory=dict)


def less_like(pid: str) -> None:
    """Callback of a card's "Less like this": the product becomes a negative example of the query."""
    away = st.session_state.setdefault("negatives", [])
    if str(pid) not in away:
        away.append(str(pid))


def clear_negatives() -> None:
    st.session_state.negatives = []


def set_query(pid: str) -> None:
    """Callback of every control that picks a product: it becomes the query."""
    st.session_state.negatives = []  # "less like this" was about the previous query
    st.session_state.query_id = str(pid)
    st.session_state.id_box = str(pid)
    if st.session_state.get("mode") == "By photo":
        st.session_state.mode = "By id"


def _typed() -> None:
    st.session_state.query_id = st.session_state.id_box.strip()


def _browsed() -> None:
    pid = st.session_state.get("browse_product")
    if pid:
        set_query(pid)


# -- pieces -------------------------------------------------------------------------------
def show_photo(target: Any, rec: Recommender, pid: str, size: int, *, width: int | str = "stretch",
               photo: str = "") -> None:
    """A product's photo: its main one, or the one the catalogue names ``photo``."""
    data = thumbnail(str(rec.photo_path(pid, photo)), size)
    if data is None:
        target.caption("photo unavailable")
    else:
        target.image(data, width=width)


def title_of(rec: Recommender, facts: dict[str, Any], pid: str, meta: dict[str, str] | None = None) -> str:
    meta = meta if meta is not None else rec.product(pid)
    return meta.get(facts["title"], "") if facts["title"] else f"{rec.id_column} {pid}"


def sidebar(rec: Recommender, facts: dict[str, Any]) -> Settings:
    s = Settings()
    sb = st.sidebar
    sb.header("Results")
    s.k = sb.slider("How many", min_value=1, max_value=min(MAX_SHOWN, max(1, len(rec) - 1)), key="k")
    gender = facts["gender"]
    if gender and sb.toggle(f"same {gender.lower()} only", key="same_gender",
                            help=f"Only products of the query's {gender}, as the reference did"):
        s.same = [gender]
    with sb.expander("Filters", expanded=False):
        for col, options in facts["filters"].items():
            chosen = st.multiselect(col, options, key=f"filter_{col}", placeholder="any")
            if chosen:
                s.where[col] = chosen
    sb.divider()
    sb.caption(f"{len(rec):,} products · model {rec.settings.model.name} · lookalike {__version__}")
    return s


def browse(rec: Recommender, facts: dict[str, Any]) -> None:
    stats = facts["stats"]
    by, within = stats["by"], stats["within"]
    meta = rec.product_metadata
    rows = meta.index
    # start from the shown product's own group
    current = rec.product(st.session_state.query_id) if st.session_state.query_id in rec else {}

    def start(options: list[str], col: str) -> int:
        return options.index(current[col]) if current.get(col) in options else 0

    c1, c2, c3 = st.columns([1, 1, 2])
    if by:
        options = list(stats["per_by"])
        value = c1.selectbox(by, options, key="browse_by", index=start(options, by))
        rows = rows[meta.loc[rows, by].astype(str) == value]
        if within:
            options = list(stats["within_per_by"].get(value, {}))
            sub = c2.selectbox(within, options, key="browse_within", index=start(options, within))
            rows = rows[meta.loc[rows, within].astype(str) == str(sub)]
    ids = meta.loc[rows, rec.id_column].astype(str).tolist()
    titles = meta.loc[rows, facts["title"]].astype(str).tolist() if facts["title"] else [""] * len(ids)
    label = dict(zip(ids, titles, strict=True))
    c3.selectbox(f"product ({len(ids)})", ids, index=None, key="browse_product", on_change=_browsed,
                 format_func=lambda pid: f"{pid} · {label.get(pid, '')}", placeholder="choose a product")
    pages = max(1, -(-len(ids) // BROWSE_PAGE))
    page = 1
    if pages > 1:
        page = st.columns([1, 4])[0].number_input(f"page (of {pages})", min_value=1, max_value=pages, step=1,
                                                  key="browse_page")
    shown = ids[(page - 1) * BROWSE_PAGE : page * BROWSE_PAGE]
    for row in range(0, len(shown), BROWSE_GRID):
        for col, pid in zip(st.columns(BROWSE_GRID), shown[row : row + BROWSE_GRID], strict=False):
            with col:
                show_photo(st, rec, pid, THUMB)
                st.caption(f"{pid} · {label.get(pid, '')}")
                st.button("Show", key=f"show_{pid}", on_click=set_query, args=(pid,))


def show_query(rec: Recommender, facts: dict[str, Any], pid: str) -> None:
    meta = rec.product(pid)
    left, right = st.columns([1, 2], gap="large")
    show_photo(left, rec, pid, LARGE, width=LARGE * 3 // 4)
    others = rec.photos(pid)[1:]
    if others:  # the product's gallery: every photo it was indexed with
        strip = left.columns(min(len(others), 6))
        for n, ref in enumerate(others[:6]):
            show_photo(strip[n], rec, pid, THUMB, photo=ref)
        left.caption(f"{len(others) + 1} photos" + (f" ({len(others) - 6} not shown)" if len(others) > 6 else ""))
    right.subheader(title_of(rec, facts, pid, meta))
    lines = [f"**{rec.id_column}** {pid}"] + [
        f"**{c}** {meta[c]}" for c in facts["describe"] if meta.get(c, "").strip()
    ]
    right.markdown("  \n".join(lines))


def show_results(rec: Recommender, facts: dict[str, Any], results: Any, settings: Settings) -> None:
    items = list(results)
    notes = []
    if settings.same:
        notes.append("same " + ", ".join(s.lower() for s in settings.same))
    notes += [f"{c}: {', '.join(v)}" for c, v in settings.where.items()]
    st.markdown(f"#### {len(items)} that look like it" + (f"  \n*{' · '.join(notes)}*" if notes else ""))
    if not items:
        st.warning("No product matches these settings: loosen the filters.")
        return
    for start in range(0, len(items), GRID):
        cols = st.columns(GRID)
        for col, r in zip(cols, items[start : start + GRID], strict=False):
            with col.container(border=True):
                show_photo(st, rec, r.id, THUMB, photo=r.matched_photo)  # the photo that matched
                st.markdown(f"**{title_of(rec, facts, r.id, r.metadata)}**")
                refs = rec.photos(r.id)
                which = f" · photo {refs.index(r.matched_photo) + 1} of {len(refs)} matched" \
                    if len(refs) > 1 and r.matched_photo in refs else ""
                st.caption(f"#{r.rank} · id {r.id} · score {r.score:.3f}{which}")
                st.button("More like this", key=f"more_{r.id}", on_click=set_query, args=(r.id,))
                st.button("Less like this", key=f"less_{r.id}", on_click=less_like, args=(r.id,))


def recommendations(rec: Recommender, facts: dict[str, Any], settings: Settings) -> None:
    mode = st.radio("Find a product", MODES, horizontal=True, key="mode")
    upload = None
    if mode == "By id":
        if st.session_state.get("id_box") != st.session_state.query_id:
            st.session_state.id_box = st.session_state.query_id
        st.text_input("Product id", key="id_box", on_change=_typed, placeholder=f"e.g. {rec.ids[0]}")
    elif mode == "Browse":
        browse(rec, facts)
    else:
        upload = st.file_uploader("A photo of a product", type=UPLOAD_TYPES, key="upload")
        if upload is None:
            st.caption("Until a photo is uploaded, the page shows the last product.")
    st.divider()

    if upload is not None:
        data = upload.getvalue()
        try:
            results = rec.similar(image=data, k=settings.k, where=settings.where or None)
            preview = photo_preview(data, LARGE)
        except LookalikeError as exc:
            st.error(f"Can't use this photo: {exc}")
            return
        left, right = st.columns([1, 2], gap="large")
        left.image(preview, width=LARGE * 3 // 4)
        right.subheader("Your photo")
        right.caption(upload.name)
        if settings.same:
            right.caption(f"“same {settings.same[0].lower()} only” needs a product; use the filters for a photo.")
        show_results(rec, facts, results, Settings(k=settings.k, where=settings.where))
        return

    pid = st.session_state.query_id.strip()
    if not pid:
        st.info("Type a product id, browse the catalogue, or upload a photo.")
        return
    away = [p for p in st.session_state.get("negatives", []) if p in rec]
    try:
        show_query(rec, facts, pid)
        results = rec.similar(pid, k=settings.k, same=settings.same, where=settings.where or None, negative_ids=away)
    except UnknownProductError:
        st.error(f"No product with id “{pid}” in this catalogue. Try another id, or browse.")
        return
    except LookalikeError as exc:
        st.error(str(exc))
        return
    if away:
        note, undo = st.columns([4, 1])
        note.caption("less like: " + ", ".join(title_of(rec, facts, p) or p for p in away))
        undo.button("Clear", key="clear_negatives", on_click=clear_negatives)
    show_results(rec, facts, results, settings)


def catalogue(rec: Recommender, facts: dict[str, Any], path: str) -> None:
    stats = facts["stats"]
    cols = stats["columns"]
    shown = [c for c in (stats["by"], stats["within"]) if c] + [
        c for c in cols if c not in (stats["by"], stats["within"])
    ]
    metrics = st.columns(min(6, 1 + len(shown)))
    metrics[0].metric("products", f"{stats['products']:,}")
    for m, col in zip(metrics[1:], shown, strict=False):
        m.metric(f"distinct {col}", cols[col]["distinct"])
    pngs = chart_pngs(path)
    by, within = stats["by"], stats["within"]
    first = [k for k in pngs if k.startswith("products_per_")]
    second = [k for k in pngs if k not in first and k != "overview" and not k.startswith("top_")]
    rest = [k for k in pngs if k not in first and k not in second]
    if first or second:
        a, b = st.columns([2, 3])
        for name in first:
            a.image(pngs[name], width="stretch")
        for name in second:
            b.image(pngs[name], width="stretch")
    if by and within and stats["within_per_by"]:
        import pandas as pd

        table = pd.DataFrame(stats["within_per_by"]).fillna(0).astype(int)
        with st.expander(f"{within} per {by} as a table"):
            st.dataframe(table, width="stretch")
    grid = st.columns(2)
    for j, name in enumerate(rest):
        grid[j % 2].image(pngs[name], width="stretch")


def main() -> None:
    st.set_page_config(page_title="lookalike", layout="wide")
    st.title("lookalike · more like this")
    path = index_path()
    if not path:
        st.error("No index given. Start the page with `lookalike app INDEX`, or set LOOKALIKE_INDEX.")
        st.stop()
    path = str(Path(path).expanduser().resolve())
    try:
        rec = load_recommender(path)
        facts = page_facts(path)
    except LookalikeError as exc:
        st.error(f"Can't open the index: {exc}")
        st.stop()
    if len(rec) == 0:
        st.warning("This index holds no products.")
        st.stop()

    st.session_state.setdefault("query_id", rec.ids[0])
    st.session_state.setdefault("k", min(DEFAULT_SHOWN, max(1, len(rec) - 1)))
    st.session_state.setdefault("same_gender", True)

    settings = sidebar(rec, facts)
    tab_rec, tab_cat = st.tabs(["Recommendations", "Catalogue"])
    with tab_rec:
        recommendations(rec, facts, settings)
    with tab_cat:
        catalogue(rec, facts, path)
    st.caption("Photos: from the catalogue's own files.")


if __name__ == "__main__":
    main()
