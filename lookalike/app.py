"""The shop-floor web page (extra: ui): ``lookalike app INDEX`` or ``streamlit run app.py -- INDEX``.

It holds no recommendation logic of its own: it finds the query (an id, a product found by
search and category steps, or an uploaded photo and a region of it), calls
:meth:`lookalike.Recommender.similar` with the shopper's filters and steering, and shows what
comes back. Browsing is :class:`lookalike.search.browse.ProductFinder`; pinning and blocking is
:meth:`lookalike.IndexWriter.change_rules`, offered only when the page was started with writes
allowed (``lookalike app --allow-writes`` or ``LOOKALIKE_APP_WRITES=1``). Photos are read from
the index's local files, never fetched from a URL in the catalogue.

The environment (set by :func:`lookalike.launch.run_app`): ``LOOKALIKE_INDEX`` (else the script's
first argument), ``LOOKALIKE_APP_CREDIT`` (the photo credit; unset: the index's own) and
``LOOKALIKE_APP_WRITES``.

Page state (``st.session_state``): ``query_id`` is the product being shown; the id box, the
browse tiles and the "More like this" buttons only set it; ``negatives`` are its "less like this".
"""

from __future__ import annotations

import html
import io
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from lookalike import LookalikeError, Recommender, Rule, UnknownProductError, __version__
from lookalike.analysis.stats import catalog_stats, grouping_columns, make_charts
from lookalike.search.browse import ProductFinder
from lookalike.search.conditions import Condition
from lookalike.search.recommender import LiveRecommender

#: the results slider's range and default (the reference showed 5)
MAX_SHOWN = 24
DEFAULT_SHOWN = 5
#: results per row of the grid, browse tiles per row and per page
GRID = 5
BROWSE_GRID = 6
BROWSE_PAGE = 18
THUMB = 240
LARGE = 480
MODES = ("By id", "Browse", "By photo")
#: the mode offered where the index's model has a text tower (an hf: CLIP or SigLIP model)
WORDS = "By words"
VIEWS = ("Recommendations", "Catalogue")
ALL = "all"
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]
CREDIT_ENV, WRITES_ENV = "LOOKALIKE_APP_CREDIT", "LOOKALIKE_APP_WRITES"
#: cards line up: a square photo box, a two-line title, one-line captions (clipped, full text on hover)
CSS = """<style>
.lk-title{font-weight:600;line-height:1.3em;height:2.6em;overflow:hidden;display:-webkit-box;
  -webkit-line-clamp:2;-webkit-box-orient:vertical;margin:0.2rem 0 0.1rem 0}
.lk-line{font-size:0.75rem;color:rgba(49,51,63,0.7);white-space:nowrap;overflow:hidden;text-overflow:ellipsis;
  height:1.35em;line-height:1.35em}
.lk-parts{font-size:0.72rem;color:rgba(49,51,63,0.7);line-height:1.3em;height:2.6em;overflow:hidden;
  display:-webkit-box;-webkit-line-clamp:2;-webkit-box-orient:vertical}
.lk-rule{color:#b35c00;font-weight:600}
[data-testid="stImage"] img{aspect-ratio:1/1;object-fit:contain}
</style>"""


def index_path() -> str | None:
    """``LOOKALIKE_INDEX``, else the first script argument (``streamlit run app.py -- INDEX``)."""
    env = os.environ.get("LOOKALIKE_INDEX", "").strip()
    if env:
        return env
    return sys.argv[1] if len(sys.argv) > 1 else None


def writes_allowed() -> bool:
    return os.environ.get(WRITES_ENV, "").strip().lower() in ("1", "true", "yes")


def photo_credit(rec: Recommender) -> str:
    """The credit under the photos: ``LOOKALIKE_APP_CREDIT`` when set (empty: none), else the index's."""
    given = os.environ.get(CREDIT_ENV)
    return given.strip() if given is not None else rec.settings.catalog.photo_credit


# -- cached data (keyed by the index folder, and its generation) --------------------------
@st.cache_resource(show_spinner="Loading the index…")
def live_recommender(path: str) -> LiveRecommender:
    return LiveRecommender(path)


@st.cache_resource(show_spinner=False)
def product_finder(path: str, generation: int) -> ProductFinder:
    return ProductFinder.of(live_recommender(path).get())


@st.cache_data(show_spinner=False)
def page_facts(path: str, generation: int) -> dict[str, Any]:
    """What the page shows of the catalogue's columns (computed once per generation)."""
    rec = live_recommender(path).get()
    table = rec.product_metadata[rec.columns]
    text = product_finder(path, generation).facets.text
    title = next((c for c in rec.columns if c.casefold() in ("producttitle", "title", "name", "productname")), None)
    title = title or (text[0] if text else None)
    gender = next((c for c in rec.columns if c.casefold() == "gender"), None)
    return {"stats": catalog_stats(table), "title": title, "gender": gender,
            "describe": [c for c in grouping_columns(table) if c != title]}


@st.cache_data(show_spinner="Drawing the charts…")
def chart_pngs(path: str, generation: int) -> dict[str, bytes]:
    rec = live_recommender(path).get()
    figs = make_charts(rec.product_metadata[rec.columns], stats=page_facts(path, generation)["stats"])
    out = {}
    for name, fig in figs.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        out[name] = buf.getvalue()
    return out


def photo_preview(photo: str | bytes, size: int, box: tuple[float, float, float, float] | None = None) -> bytes:
    """The photo fitted onto a white square, as JPEG, with the region ``box`` (fractions) outlined;
    raises ImageError."""
    from PIL import Image, ImageDraw

    from lookalike.reading.images import open_image

    img = open_image(photo, draft=size)
    scale = size / max(img.width, img.height)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
    if box is not None:
        x, y, w, h = box
        ImageDraw.Draw(img).rectangle((x * img.width, y * img.height, (x + w) * img.width - 1,
                                       (y + h) * img.height - 1), outline=(230, 60, 20), width=max(2, size // 120))
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
    """What the sidebar asks of :meth:`Recommender.similar`."""

    k: int = DEFAULT_SHOWN
    same: list[str] = field(default_factory=list)
    where: list[Condition] = field(default_factory=list)
    boost: list[str] = field(default_factory=list)
    max_per: dict[str, int] = field(default_factory=dict)
    diversity: float | None = None
    colour_weight: float | None = None
    explain: bool = True

    def query(self, *, photo: bool = False) -> dict[str, Any]:
        """The keyword arguments of ``similar`` (a photo query takes no ``same``)."""
        out: dict[str, Any] = {"k": self.k, "where": self.where or None, "boost": self.boost,
                               "max_per": self.max_per or None, "diversity": self.diversity,
                               "colour_weight": self.colour_weight, "explain": self.explain}
        if not photo:
            out["same"] = self.same
        return out

    def notes(self, *, photo: bool = False) -> list[str]:
        out = [] if photo or not self.same else ["same " + ", ".join(s.lower() for s in self.same)]
        out += [str(c) for c in self.where] + [f"boost {b}" for b in self.boost]
        out += [f"at most {n} per {c}" for c, n in self.max_per.items()]
        if self.diversity:
            out.append(f"diversity {self.diversity:g}")
        return out


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


def change_rules(path: str, add: list[Rule], remove: list[Rule]) -> None:
    """Callback of pin, block and remove: one generation through the index's writer."""
    from lookalike.writing.writer import IndexWriter

    try:
        IndexWriter(path).change_rules(add=add, remove=remove)
        st.session_state.rule_message = ("ok", "; ".join([*map(str, add), *(f"removed: {r}" for r in remove)]))
    except LookalikeError as exc:
        st.session_state.rule_message = ("error", f"Can't change the rules: {exc}")


def _typed() -> None:
    st.session_state.query_id = st.session_state.id_box.strip()


def _first_page() -> None:
    """Callback of the search box and the steps: other products, from their first page."""
    st.session_state.browse_page = 1


# -- pieces -------------------------------------------------------------------------------
def show_photo(target: Any, rec: Recommender, pid: str, size: int, *, width: int | str = "stretch",
               photo: str = "") -> None:
    """A product's photo: its main one, or the one the catalogue names ``photo``."""
    data = thumbnail(str(rec.photo_path(pid, photo)), size)
    if data is None:
        target.caption("photo unavailable")
    else:
        target.image(data, width=width)


def lines(target: Any, title: str, line: str, *, parts: tuple[str, str] | None = None, rule: str | None = None) -> None:
    """A card's text, each piece in a box of fixed height so that cards line up: the title (two
    lines), one line, the score's parts (two lines; hover: in full) and the rule's line, when
    given (empty boxes too: one card's rule must not push its buttons below the others')."""
    out = [f'<div class="lk-title" title="{html.escape(title)}">{html.escape(title)}</div>',
           f'<div class="lk-line" title="{html.escape(line)}">{html.escape(line)}</div>']
    if parts is not None:
        out.append(f'<div class="lk-parts" title="{html.escape(parts[1])}">{html.escape(parts[0])}</div>')
    if rule is not None:
        out.append(f'<div class="lk-line lk-rule" title="{html.escape(rule)}">{html.escape(rule)}</div>')
    target.markdown("".join(out), unsafe_allow_html=True)


def title_of(rec: Recommender, facts: dict[str, Any], pid: str, meta: dict[str, str] | None = None) -> str:
    meta = meta if meta is not None else rec.product(pid)
    return meta.get(facts["title"], "") if facts["title"] else f"{rec.id_column} {pid}"


def filters(rec: Recommender, finder: ProductFinder) -> list[Condition]:
    """The sidebar's filters: a multiselect per few-valued column, a range slider per numeric one."""
    facets = finder.facets
    values: dict[str, list[str]] = {}
    spans: dict[str, tuple[float, float]] = {}
    with st.sidebar.expander("Filters", expanded=False):
        for col, facet in facets.facets.items():
            values[col] = st.multiselect(col, list(facet.values), key=f"filter_{col}", placeholder="any")
        for col, span in facets.ranges.items():
            if span.high > span.low:  # whole numbers over a wide span (16..2000, not 16.51..1999.51)
                wide = span.high - span.low >= 20
                low, high = (float(math.floor(span.low)), float(math.ceil(span.high))) if wide else (span.low, span.high)
                spans[col] = st.slider(col, min_value=low, max_value=high, value=(low, high),
                                       step=1.0 if wide else (high - low) / 100, key=f"range_{col}",
                                       help=f"a range leaves out the {span.missing} products without a number"
                                       if span.missing else None)
    return facets.conditions(values, spans)


def steering(rec: Recommender, finder: ProductFinder, s: Settings) -> None:
    """The sidebar's steering: colour weight, boosts, a cap per value, diversity, explanations."""
    sb = st.sidebar
    with sb.expander("Steer", expanded=False):
        if rec.metric == "cosine" and rec.settings.colour_dim:
            s.colour_weight = st.slider("Colour weight", 0.0, 1.0, float(rec.colour_weight), 0.05, key="colour_weight",
                                        help="0: shape only; the index's own is the default")
        numeric = list(finder.facets.ranges)
        example = f"{numeric[0]}:*0.001" if numeric else "Colour=Black:+0.05"
        text = st.text_area("Boosts, one a line", key="boosts", placeholder=example, height=80,
                            help="CONDITION:+W adds W where it holds (Colour=Black:+0.05), CONDITION:*W multiplies; "
                                 "COLUMN:+W adds W × a numeric column's value, COLUMN:*W multiplies by 1 + W × it")
        s.boost = [line.strip() for line in text.splitlines() if line.strip()]
        capped = st.selectbox("At most N per", [None, *finder.facets.facets], key="max_per_col",
                              format_func=lambda c: "no cap" if c is None else c)
        if capped:
            s.max_per = {capped: int(st.number_input("N", 1, 50, 2, key="max_per_n"))}
        div = st.slider("Diversity", 0.0, 1.0, 0.0, 0.05, key="diversity",
                        help="0: the plain ranking; more chooses results less like one another (MMR)")
        s.diversity = div or None
        s.explain = st.toggle("Explain scores", key="explain", help="each card's score in parts")
    d = rec.query_defaults
    told = [*d.where, *(f"boost {b}" for b in d.boost), *(f"max-per {m}" for m in d.max_per)]
    if told:
        sb.caption("the index's defaults: " + " · ".join(told))


def sidebar(rec: Recommender, facts: dict[str, Any], finder: ProductFinder, *, photo: bool) -> Settings:
    s = Settings()
    sb = st.sidebar
    sb.header("Results")
    s.k = sb.slider("How many", min_value=1, max_value=min(MAX_SHOWN, max(1, len(rec) - 1)), key="k")
    gender = facts["gender"]
    if gender and not photo and sb.toggle(f"same {gender.lower()} only", key="same_gender",
                                          help=f"Only products of the query's {gender}, as the reference did"):
        s.same = [gender]
    s.where = filters(rec, finder)
    steering(rec, finder, s)
    sb.divider()
    sb.caption(f"{len(rec):,} products · model {rec.settings.model.name} · generation {rec.generation} · "
               f"lookalike {__version__}" + (" · rules can be changed" if writes_allowed() else ""))
    return s


def browse(rec: Recommender, facts: dict[str, Any], finder: ProductFinder) -> None:
    """Search words and a category step (each offering what the others leave), then tiles."""
    steps = finder.facets.steps
    cols = st.columns([2] + [1] * len(steps))
    text = cols[0].text_input("Search", key="browse_text", on_change=_first_page,
                              placeholder="words of a title, a colour, a type… or an id")
    chosen: dict[str, list[str]] = {}
    for col in steps:
        value = st.session_state.get(f"step_{col}", ALL)
        if value not in (ALL, None):
            chosen[col] = [value]
    found = finder.find(text, where=finder.facets.conditions(chosen))
    for col, target in zip(steps, cols[1:], strict=True):
        counts = found.counts.get(col, {})
        # the values that would find something (labels stay the values: the browser sends the
        # chosen label back, so a label with a count that changes would lose the choice)
        options: list[str] = [ALL, *counts]
        current = str(st.session_state.get(f"step_{col}", ALL))
        if current not in options:  # nothing left there: keep it
            options.append(current)
        target.selectbox(col, options, key=f"step_{col}", on_change=_first_page,
                         help=" · ".join(f"{v}: {n}" for v, n in list(counts.items())[:12]) or None)
    pages = found.pages(BROWSE_PAGE)
    info, pager = st.columns([4, 1])
    page = 1
    if st.session_state.get("browse_page", 1) > pages:  # fewer pages than before: back to the first
        st.session_state.browse_page = 1
    if pages > 1:
        page = int(pager.number_input(f"page (of {pages})", min_value=1, max_value=pages, step=1, key="browse_page"))
    info.caption(f"{len(found):,} products" + (f" · page {page} of {pages}" if pages > 1 else ""))
    if not len(found):
        st.info("No product matches: fewer words, or another step.")
        return
    shown = found.page(page, BROWSE_PAGE)
    for row in range(0, len(shown), BROWSE_GRID):
        for tile, pid in zip(st.columns(BROWSE_GRID), shown[row : row + BROWSE_GRID], strict=False):
            with tile.container(border=True):
                show_photo(st, rec, pid, THUMB)
                lines(st, title_of(rec, facts, pid), f"id {pid}")
                st.button("Show", key=f"show_{pid}", on_click=set_query, args=(pid,), width="stretch")


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
    described = [f"**{rec.id_column}** {pid}"] + [
        f"**{c}** {meta[c]}" for c in [*facts["describe"], *rec.settings.catalog.numeric_columns]
        if meta.get(c, "").strip()
    ]
    right.markdown("  \n".join(dict.fromkeys(described)))


def explained(r: Any) -> tuple[str, str]:
    """A result's score parts as a short line and in full (hover)."""
    if not r.explain:
        return "", ""
    full = " + ".join(f"{name} {value:.4f}" for name, value in r.explain.items())
    short = " · ".join(f"{name.removeprefix('boost ')} {value:+.3f}" if name.startswith("boost ")
                       else f"{name} {value:.3f}" for name, value in r.explain.items())
    return short, f"score {r.score:.4f} = {full}"


def card(rec: Recommender, facts: dict[str, Any], r: Any, *, query: str | None, path: str, rules_shown: bool) -> None:
    """One result: its matched photo, title, rank and score (and parts), its actions."""
    show_photo(st, rec, r.id, THUMB, photo=r.matched_photo)  # the photo that matched
    refs = rec.photos(r.id)
    which = f" · photo {refs.index(r.matched_photo) + 1}/{len(refs)}" \
        if len(refs) > 1 and r.matched_photo in refs else ""
    lines(st, title_of(rec, facts, r.id, r.metadata), f"#{r.rank} · id {r.id} · score {r.score:.3f}{which}",
          parts=explained(r) if r.explain is not None else None, rule=r.rule if rules_shown else None)
    st.button("More like this", key=f"more_{r.id}", on_click=set_query, args=(r.id,), width="stretch")
    st.button("Less like this", key=f"less_{r.id}", on_click=less_like, args=(r.id,), width="stretch")
    if query is not None and writes_allowed():
        pin, block = st.columns(2)
        pin.button("Pin", key=f"pin_{r.id}", on_click=change_rules,
                   args=(path, [Rule("pin", r.id, query, 1)], []), help=f"always show {r.id} first for {query}")
        block.button("Block", key=f"block_{r.id}", on_click=change_rules,
                     args=(path, [Rule("block", r.id, query)], []), help=f"never show {r.id} for {query}")


def show_results(rec: Recommender, facts: dict[str, Any], results: Any, notes: list[str], *,
                 query: str | None, path: str) -> None:
    items = list(results)
    st.markdown(f"#### {len(items)} that look like it" + (f"  \n*{' · '.join(notes)}*" if notes else ""))
    if not items:
        st.warning("No product matches these settings: loosen the filters.")
        return
    rules_shown = any(r.rule for r in items)
    for start in range(0, len(items), GRID):
        cols = st.columns(GRID)
        for col, r in zip(cols, items[start : start + GRID], strict=False):
            with col.container(border=True):
                card(rec, facts, r, query=query, path=path, rules_shown=rules_shown)


def rules_panel(rec: Recommender, pid: str, path: str) -> None:
    """The pins and blocks acting on this product's results; removable when writes are allowed."""
    mine = [r for r in rec.rules if r.for_id == pid or r.for_id is None]
    message = st.session_state.pop("rule_message", None)
    if message:
        if message[0] == "ok":
            st.toast(message[1])
        else:
            st.error(message[1])
    if not mine:
        return
    with st.expander(f"Rules for {pid} ({len(mine)})", expanded=writes_allowed()):
        for n, rule in enumerate(mine):
            text, action = st.columns([5, 1])
            text.markdown(str(rule))
            if writes_allowed():
                action.button("Remove", key=f"unrule_{n}", on_click=change_rules, args=(path, [], [rule]))
        if not writes_allowed():
            st.caption("read-only: start the page with `lookalike app --allow-writes` to change rules")


def region(data: bytes) -> tuple[float, float, float, float] | None:
    """The region of an uploaded photo to search with: two range sliders (percent of its width
    and height); the whole photo is no region."""
    with st.expander("Search with a region of the photo", expanded=False):
        a, b = st.columns(2)
        x0, x1 = a.slider("from left to right (%)", 0, 100, (0, 100), key="box_x")
        y0, y1 = b.slider("from top to bottom (%)", 0, 100, (0, 100), key="box_y")
    if (x0, x1, y0, y1) == (0, 100, 0, 100) or x1 <= x0 or y1 <= y0:
        return None
    return x0 / 100, y0 / 100, (x1 - x0) / 100, (y1 - y0) / 100


def photo_query(rec: Recommender, facts: dict[str, Any], upload: Any, settings: Settings, path: str) -> None:
    data = upload.getvalue()
    box = region(data)
    away = [p for p in st.session_state.get("negatives", []) if p in rec]
    try:
        results = rec.similar(image=data, box=box, negative_ids=away, **settings.query(photo=True))
        preview = photo_preview(data, LARGE, box)
    except LookalikeError as exc:
        st.error(f"Can't use this photo: {exc}")
        return
    left, right = st.columns([1, 2], gap="large")
    left.image(preview, width=LARGE * 3 // 4)
    right.subheader("Your photo")
    right.caption(upload.name + (" · the outlined region" if box else ""))
    negatives_line(rec, facts, away)
    show_results(rec, facts, results, settings.notes(photo=True), query=None, path=path)


def text_query(rec: Recommender, facts: dict[str, Any], words: str, settings: Settings, path: str) -> None:
    """Products whose photos are nearest some words (the model's text tower; no colour part)."""
    away = [p for p in st.session_state.get("negatives", []) if p in rec]
    try:
        results = rec.similar(text=words, negative_ids=away, **settings.query(photo=True))
    except LookalikeError as exc:
        st.error(f"Can't search for these words: {exc}")
        return
    st.subheader(f"“{words}”")
    negatives_line(rec, facts, away)
    show_results(rec, facts, results, settings.notes(photo=True), query=None, path=path)


def negatives_line(rec: Recommender, facts: dict[str, Any], away: list[str]) -> None:
    if away:
        note, undo = st.columns([4, 1])
        note.caption("less like: " + ", ".join(title_of(rec, facts, p) or p for p in away))
        undo.button("Clear", key="clear_negatives", on_click=clear_negatives)


def product_query(rec: Recommender, facts: dict[str, Any], settings: Settings, path: str) -> None:
    pid = st.session_state.query_id.strip()
    if not pid:
        st.info("Type a product id, browse the catalogue, or upload a photo.")
        return
    away = [p for p in st.session_state.get("negatives", []) if p in rec]
    try:
        show_query(rec, facts, pid)
        results = rec.similar(pid, negative_ids=away, **settings.query())
    except UnknownProductError:
        st.error(f"No product with id “{pid}” in this catalogue. Try another id, or browse.")
        return
    except LookalikeError as exc:
        st.error(str(exc))
        return
    negatives_line(rec, facts, away)
    rules_panel(rec, pid, path)
    show_results(rec, facts, results, settings.notes(), query=pid, path=path)


def find_mode(rec: Recommender, facts: dict[str, Any], finder: ProductFinder) -> Any:
    """The query's controls (by id, browse, a photo, and words where the model reads them); the
    upload, when one is given, else the words, when some are typed."""
    modes = (*MODES, WORDS) if rec.supports_text else MODES
    if st.session_state.get("mode") not in modes:
        st.session_state.mode = MODES[0]
    mode = st.radio("Find a product", modes, horizontal=True, key="mode")
    upload = None
    if mode == WORDS:
        words = st.text_input("Words", key="words", placeholder="e.g. red running shoes",
                              help="the index's model reads words (its text tower): the photos nearest them")
        return words.strip() or None
    if mode == "By id":
        if st.session_state.get("id_box") != st.session_state.query_id:
            st.session_state.id_box = st.session_state.query_id
        st.text_input("Product id", key="id_box", on_change=_typed, placeholder=f"e.g. {rec.ids[0]}")
    elif mode == "Browse":
        browse(rec, facts, finder)
    else:
        upload = st.file_uploader("A photo of a product", type=UPLOAD_TYPES, key="upload")
        if upload is None:
            st.caption("Until a photo is uploaded, the page shows the last product.")
    return upload


def catalogue(facts: dict[str, Any], path: str, generation: int) -> None:
    stats = facts["stats"]
    cols = stats["columns"]
    shown = [c for c in (stats["by"], stats["within"]) if c] + [
        c for c in cols if c not in (stats["by"], stats["within"])
    ]
    metrics = st.columns(min(6, 1 + len(shown)))
    metrics[0].metric("products", f"{stats['products']:,}")
    for m, col in zip(metrics[1:], shown, strict=False):
        m.metric(f"distinct {col}", cols[col]["distinct"])
    pngs = chart_pngs(path, generation)
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


def open_index() -> tuple[str, Recommender]:
    """The index folder and its current generation's recommender (the page stops on an error)."""
    path = index_path()
    if not path:
        st.error("No index given. Start the page with `lookalike app INDEX`, or set LOOKALIKE_INDEX.")
        st.stop()
    path = str(Path(path).expanduser().resolve())
    try:
        rec = live_recommender(path).get(fresh=True)  # one stat while nothing changed; a new rule shows at once
    except LookalikeError as exc:
        st.error(f"Can't open the index: {exc}")
        st.stop()
    if len(rec) == 0:
        st.warning("This index holds no products.")
        st.stop()
    return path, rec


def main() -> None:
    st.set_page_config(page_title="lookalike", layout="wide")
    st.markdown(CSS, unsafe_allow_html=True)
    st.title("lookalike · more like this")
    path, rec = open_index()
    facts, finder = page_facts(path, rec.generation), product_finder(path, rec.generation)
    st.session_state.setdefault("query_id", rec.ids[0])
    st.session_state.setdefault("k", min(DEFAULT_SHOWN, max(1, len(rec) - 1)))
    st.session_state.setdefault("same_gender", True)
    st.session_state.setdefault("explain", True)

    view = st.segmented_control("View", VIEWS, key="view", default=VIEWS[0], label_visibility="collapsed")
    if view == "Catalogue":  # no sidebar here: its settings act on recommendations only
        catalogue(facts, path, rec.generation)
    else:
        asked = find_mode(rec, facts, finder)
        settings = sidebar(rec, facts, finder, photo=asked is not None)
        st.divider()
        if isinstance(asked, str):
            text_query(rec, facts, asked, settings, path)
        elif asked is not None:
            photo_query(rec, facts, asked, settings, path)
        else:
            product_query(rec, facts, settings, path)
    credit = photo_credit(rec)
    if credit:
        st.caption(credit)


if __name__ == "__main__":
    main()
