"""Read and check a catalogue: ids, metadata and photo paths, with a reason per bad row."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lookalike.config import DEFAULT_ID_COLUMN, DEFAULT_IMAGE_COLUMN, DEFAULT_IMAGE_SEPARATOR, FetchSettings
from lookalike.errors import CatalogError

if TYPE_CHECKING:
    from lookalike.reading.fetch import Fetched, PhotoFetcher

logger = logging.getLogger(__name__)

__all__ = ["Catalog", "RowProblem", "TableFile", "read_table", "read_table_file", "load_catalog", "file_sha256",
           "split_photos", "merge_products", "image_columns_of", "repeated_row_problem"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class RowProblem:
    """A catalogue row that was not indexed, and why. ``row`` counts data rows from 1."""

    row: int
    id: str
    image: str
    reason: str
    #: a problem of this one photo (its product may be indexed with its others), not of the row
    photo: bool = False

    @property
    def note(self) -> str:
        """The reason, naming the photo when the reason does not."""
        return self.reason if not self.image or self.image in self.reason else f"{self.image}: {self.reason}"


@dataclass
class Catalog:
    """The usable photos of a catalogue's products (in file order) and the problems of the rest.

    Row ``i`` is one photo: its product's cells (those of the product's first row), the photo on
    this machine (``image_paths[i]``), as the catalogue names it (``refs[i]``), its place among
    the product's photos (``photo_numbers[i]``) and the 1-based row of the file that named it
    (``rows[i]``). A product of one photo is one row, as before products had several."""

    table: pd.DataFrame  # a row per usable photo; every column as text; index reset
    image_paths: list[Path]  # row i's photo
    rows: list[int]  # the 1-based row of the file that named row i's photo
    problems: list[RowProblem] = field(default_factory=list)
    id_column: str = DEFAULT_ID_COLUMN
    image_column: str = DEFAULT_IMAGE_COLUMN
    source: Path | None = None
    sha256: str = ""
    total_rows: int = 0
    images_root: Path | None = None  # the images folder, resolved: every photo lies inside it
    allow_outside_images: bool = False  # unless this was asked for
    photo_cache: Path | None = None  # where the photos of URL rows were fetched to (those rows' root)
    private_urls: bool = True  # False: photo URLs of private addresses were refused
    refs: list[str] = field(default_factory=list)  # row i's photo as the catalogue names it
    photo_numbers: list[int] = field(default_factory=list)  # row i's place among its product's photos
    image_columns: tuple[str, ...] = ()  # every column naming photos (the first is image_column)
    image_separator: str = DEFAULT_IMAGE_SEPARATOR
    parent_column: str | None = None  # the column naming a variant's parent product
    layout: str | None = None  # the platform layout it was read with (reading/layouts), if any
    #: photo URLs left unfetched (``load_catalog(fetch_urls=False)``): their photos are neither
    #: rows nor problems until :meth:`with_fetched`; they go to ``photo_cache`` with ``fetch_settings``
    unfetched: list[str] = field(default_factory=list)
    fetch_settings: FetchSettings | None = None
    _pending: "_Pending | None" = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.refs:
            self.refs = [str(p) for p in self.image_paths]
        if not self.photo_numbers:
            self.photo_numbers = [0] * len(self.image_paths)
        if not self.image_columns:
            self.image_columns = (self.image_column,)

    @property
    def ids(self) -> list[str]:
        """Each row's product id (a product of several photos is several rows)."""
        return self.table[self.id_column].tolist()

    @property
    def products(self) -> list[str]:
        """The products, each once, in file order."""
        return list(dict.fromkeys(self.ids))

    def with_fetched(self, fetched: "Mapping[str, Fetched]") -> Catalog:
        """This catalogue with its :attr:`unfetched` photo URLs resolved by ``fetched`` (URL → its
        outcome, fetched into :attr:`photo_cache` by whichever process): the catalogue
        :func:`load_catalog` reads when it fetches them itself, rows, order and problems alike."""
        if not self.unfetched or self._pending is None:
            return self
        missing = [url for url in self.unfetched if url not in fetched]
        if missing:
            raise CatalogError(f"{len(missing)} photo URLs came back unfetched, the first {missing[0]}")
        done = _assemble(self._pending, fetched=fetched, folder=self.photo_cache)
        if self._pending.renumber is not None:
            done.renumber(*self._pending.renumber)
        done.source, done.sha256, done.layout = self.source, self.sha256, self.layout
        return done

    def renumber(self, file_row: Callable[[int], int], extra: Sequence[RowProblem], total_rows: int) -> None:
        """Number rows and problems as the file does (``file_row`` of a table row), add the file's
        own problems (``extra``) and its row count (a platform layout read into a table); kept for
        :meth:`with_fetched`."""
        self.problems = sorted([replace(p, row=file_row(p.row)) for p in self.problems] + list(extra),
                               key=lambda p: p.row)
        self.rows = [file_row(r) for r in self.rows]
        self.total_rows = total_rows
        if self._pending is not None:
            self._pending.renumber = (file_row, list(extra), total_rows)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TableFile:
    """A catalogue file read as text, and the rows in it that are cut short.

    A row is *cut short* when it has fewer cells than the header: pandas would fill the
    missing cells with empty text, and an empty title or photo cell is a real change, so such
    a row is never used as it reads; :func:`load_catalog` and the live changes report it as a
    problem with its reason. ``cut_at_end`` is the signature of a truncated export: the last
    row is cut short and the file does not end with a newline.
    """

    table: pd.DataFrame  # every cell as text; the cells a short row lacks read as empty
    short_rows: dict[int, int] = field(default_factory=dict)  # 1-based data row -> cells it has
    cut_at_end: bool = False

    @property
    def width(self) -> int:
        return len(self.table.columns)

    def reason(self, row: int) -> str:
        """Why ``row`` (1-based) can't be used, as a row problem says it."""
        end = " and ends the file without a newline (a truncated export?)" if self.cut_at_end and \
            row == len(self.table) else ""
        return f"cut short: the row has {self.short_rows[row]} of {self.width} cells{end}"


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV/TSV or Parquet table with every cell as text (ids like 00123 stay whole).

    A float column of whole numbers (what a Parquet writer makes of integer ids with a gap)
    reads as ``42419``, not ``42419.0``; its missing cells read as empty text. Two columns
    with the same name are a :class:`CatalogError` (pandas would rename one ``Gender.1``), and
    so is a file that ends inside a quoted field (cut mid-field, or a quote never closed). The
    cells a row shorter than the header lacks read as empty: :func:`read_table_file` says which
    rows those are.
    """
    return read_table_file(path).table


def read_table_file(path: str | os.PathLike) -> TableFile:
    """:func:`read_table`, with the rows cut short (fewer cells than the header)."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"catalogue not found: {path}")
    suffix = path.suffix.lower()
    short: dict[int, int] = {}
    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
            _check_unique_columns([str(c) for c in df.columns], f"catalogue {path.name}")
            df = _as_text(df)
        else:
            sep = "\t" if suffix in (".tsv", ".tab") else ","
            with open(path, newline="", encoding="utf-8-sig") as f:
                _check_unique_columns(next(csv.reader(f, delimiter=sep), []), f"catalogue {path.name}")
            df = pd.read_csv(
                path, dtype=str, keep_default_na=False, sep=sep, encoding="utf-8-sig",
                on_bad_lines="error",
            )
            # a short row's missing cells read as empty text, so its last cell is empty: only
            # then are the rows' cells counted (a second, slower pass over the file)
            if len(df.columns) > 1 and (df[df.columns[-1]] == "").any():
                short = _short_rows(path, sep, len(df))
    except pd.errors.ParserError as exc:
        if "EOF inside string" in str(exc):
            raise CatalogError(
                f"can't read catalogue {path}: it ends inside a quoted field (the export was cut short, "
                "or a quote is never closed)"
            ) from None
        raise CatalogError(f"can't read catalogue {path}: {_first_line(exc)}") from None
    except (ValueError, OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CatalogError(f"can't read catalogue {path}: {_first_line(exc)}") from None
    df.columns = [str(c).strip() for c in df.columns]
    cut_at_end = len(df) in short and not _ends_with_newline(path)
    return TableFile(df, short, cut_at_end)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _short_rows(path: Path, sep: str, rows: int) -> dict[int, int]:
    """Data rows (1-based) with fewer cells than the header, and how many cells they have."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        records = csv.reader(f, delimiter=sep)
        width = len(next(records, []))
        # pandas skips blank lines (whitespace only included): so does the count
        cells = [len(r) for r in records if r and not (len(r) == 1 and not r[0].strip())]
    if len(cells) != rows:  # a file pandas and the csv module split differently: don't guess
        logger.warning("can't tell which rows of %s are cut short (%d records, %d rows)", path, len(cells), rows)
        return {}
    return {i + 1: n for i, n in enumerate(cells) if n < width}


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) in (b"\n", b"\r")


def _check_unique_columns(header: list[str], what: str) -> None:
    names = [c.strip() for c in header]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CatalogError(
            f"{what} has repeated column names: {', '.join(map(repr, repeated))}; "
            "give every column its own name"
        )


#: tables this small are checked cell by cell for being text already
_SMALL_TABLE = 1000


def _as_text(df: pd.DataFrame) -> pd.DataFrame:
    """Every cell as text; missing cells empty, whole-number floats without ``.0``."""
    if len(df) <= _SMALL_TABLE and all(
            df[c].dtype == object or isinstance(df[c].dtype, pd.StringDtype) for c in df.columns) and all(
            isinstance(v, str) for c in df.columns for v in df[c].tolist()):
        return df.astype(object)  # already text (a few rows from code or HTTP): no trip through pandas' string dtype
    df = df.copy()
    for col in df.columns:
        values = df[col]
        if not pd.api.types.is_float_dtype(values.dtype):
            continue
        known = values.dropna().to_numpy(dtype=np.float64)
        if len(known) and np.isfinite(known).all() and (np.abs(known) < 2**53).all() \
                and (known == np.floor(known)).all():
            df[col] = values.astype("Int64")
    return df.astype("string").fillna("").astype(object)


#: a reference with a URL scheme (``file://``, ``https://``); ``c:\\x.jpg`` and ``a:b.jpg`` are paths
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")


def _scheme(value: str) -> str:
    """A reference's URL scheme, lower case ("" for a path)."""
    url = _URL.match(value)
    return url.group(1).lower() if url else ""


def _is_http(value: str) -> bool:
    return _scheme(value) in ("http", "https")


class _FileFinder:
    """Finds a photo by relative path, or by file name anywhere below the images folder.

    Photos must resolve inside the folder: ``../elsewhere/x.png``, absolute paths and links
    to files outside it are refused unless ``allow_outside`` is set. The folder is walked
    once, following links to folders only when they stay inside it, and never into a
    folder already seen (``a -> .`` loops would otherwise never end).
    """

    def __init__(self, root: Path, *, allow_outside: bool = False,
                 fetched: "Mapping[str, Fetched] | None" = None) -> None:
        self.root = root
        self.real_root = root.resolve()
        self.allow_outside = allow_outside
        self.fetched = fetched  # photo URLs -> their files in the photo cache (reading/fetch)
        self._by_name: dict[str, dict[Path, None]] | None = None

    def _inside(self, real: Path) -> bool:
        return real == self.real_root or self.real_root in real.parents

    def _index(self) -> dict[str, dict[Path, None]]:
        if self._by_name is None:
            by_name: dict[str, dict[Path, None]] = {}  # name -> real paths, in walk order
            seen: set[tuple[int, int]] = set()
            stack = [str(self.root)]
            while stack:
                folder = stack.pop()
                try:
                    st = os.stat(folder)
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
                except OSError:
                    continue
                for entry in entries:
                    try:
                        if entry.is_dir():
                            if not entry.is_symlink() or self._inside(Path(os.path.realpath(entry.path))):
                                stack.append(entry.path)
                        elif entry.is_file():
                            by_name.setdefault(entry.name, {})[Path(os.path.realpath(entry.path))] = None
                    except OSError:  # a dangling or looping link, a name the system refuses
                        continue
            self._by_name = by_name
        return self._by_name

    def _outside(self, value: str) -> str:
        return f"photo is outside the images folder: {value} (--allow-outside-images to index it anyway)"

    def find(self, value: str) -> tuple[Path | None, str]:
        """The photo a catalogue cell names, or why there is none. References as platforms write
        them: relative to the images folder; rooted at it (``/m/h/mh01.jpg``, the way Magento 2
        writes media paths, is ``IMAGES/m/h/mh01.jpg``); an absolute path or a ``file://`` URL of
        a file inside the folder; an ``http(s)://`` URL fetched already (``fetched``) is its file in
        the photo cache. Anything that leads outside the folder is refused unless asked for."""
        scheme = _scheme(value)
        if scheme in ("http", "https"):
            got = self.fetched.get(value) if self.fetched is not None else None
            if got is None:
                return None, f"photo URL not fetched: {value}"
            return got.path, got.reason
        if scheme == "file":
            parsed = urllib.parse.urlsplit(value)
            if parsed.netloc not in ("", "localhost"):
                return None, f"file:// URL of another host: {value}"
            return self._absolute(urllib.request.url2pathname(parsed.path), rooted=False)
        elif scheme:
            return None, f"unsupported photo reference: {value} (a path inside the images folder, or file://)"
        if Path(value).is_absolute():
            return self._absolute(value)
        return self._relative(value)

    def _absolute(self, value: str, *, rooted: bool = True) -> tuple[Path | None, str]:
        """A path from the file system's root; first (``rooted``) tried as one from the folder's."""
        if rooted:
            inside = self._relative(value.lstrip("/\\"), name_search=False)
            if inside[0] is not None or inside[1].startswith("photo is outside"):
                return inside
        try:
            real = Path(value).resolve() if Path(value).is_file() else None
        except (OSError, ValueError):
            real = None
        if real is not None and (self.allow_outside or self._inside(real)):
            return real, ""
        if real is not None:
            return None, f"absolute photo path outside the images folder: {value} (--allow-outside-images to index it anyway)"
        also = f" nor {self.root / value.lstrip('/')}" if rooted else ""
        return None, f"photo file not found: {value} (neither that path{also} is a file)"

    def _relative(self, value: str, *, name_search: bool = True) -> tuple[Path | None, str]:
        direct = self.root / value
        try:
            is_file = direct.is_file()
        except (OSError, ValueError):  # a name too long, a NUL byte
            is_file = False
        if is_file:
            real = direct.resolve()
            if not self.allow_outside and not self._inside(real):
                return None, self._outside(value)
            return real, ""
        if not name_search:
            return None, f"photo file not found: {value}"
        found = list(self._index().get(Path(value).name, {}))
        inside = found if self.allow_outside else [p for p in found if self._inside(p)]
        if len(inside) == 1:
            return inside[0], ""
        if len(inside) > 1:
            return None, f"ambiguous photo name: {len(inside)} files named {Path(value).name!r}"
        if found:
            return None, self._outside(value)
        return None, f"photo file not found: {value}"


def split_photos(cells: Sequence[str], separator: str = DEFAULT_IMAGE_SEPARATOR) -> list[str]:
    """The photo references of a product's image cells: each cell split by ``separator`` (none:
    the cell is one reference), blanks dropped, each reference once, in order."""
    refs: list[str] = []
    for cell in cells:
        parts = str(cell).split(separator) if separator else [str(cell)]
        refs += [p.strip() for p in parts if p.strip()]
    return list(dict.fromkeys(refs))


@dataclass
class _Product:
    """A product as the table names it: its first row (0-based position) and its photo
    references, each with the 1-based row that named it."""

    id: str
    first: int
    refs: dict[str, int] = field(default_factory=dict)


def repeated_row_problem(columns: Sequence[str], first: Mapping[str, str], here: Mapping[str, str], first_row: int,
                         adds_photos: bool) -> str:
    """Why a later row of a product's id can't merge into it ("" when it can): one of ``columns``
    holds a cell neither empty nor the first row's, or it names no photo the product lacks (every
    row is merged or reported). Builds and live changes ask it alike."""
    for col in columns:
        if here[col].strip() and here[col] != first[col]:
            return f"duplicate id (first on row {first_row}) with other cells: {col} is {first[col]!r} there, " \
                   f"{here[col]!r} here"
    return "" if adds_photos else f"duplicate id (first on row {first_row}): the row names no photo its product lacks"


def merge_products(ids: Sequence[str], df: pd.DataFrame, image_columns: Sequence[str],
                   separator: str = DEFAULT_IMAGE_SEPARATOR, read: "TableFile | None" = None,
                   ) -> tuple[list[_Product], list[RowProblem]]:
    """The table's products in order of first appearance, and the problems of the other rows.

    Rows with the same id are one product (the *long layout*: a row per photo, as Shopify's
    product CSV writes it): a later row adds its photos when each of its other cells is empty
    or equal to the first row's; one that differs is that row's problem, and adds nothing. Rows
    cut short, with an empty id, or a product naming no photo at all, are problems too."""
    others = [c for c in df.columns if c not in image_columns]
    cells = {c: df[c].astype(str).tolist() for c in others}
    photo_cells = [df[c].astype(str).tolist() for c in image_columns]
    problems: list[RowProblem] = []
    products: dict[str, _Product] = {}
    for i, pid in enumerate(ids):
        row = i + 1
        named = [col[i] for col in photo_cells]
        refs = split_photos(named, separator)
        shown = separator.join(refs) if refs else ""
        if read is not None and row in read.short_rows:
            problems.append(RowProblem(row, pid, shown, read.reason(row)))
        elif not pid:
            problems.append(RowProblem(row, pid, shown, "empty id"))
        elif pid in products:
            product = products[pid]
            new = [ref for ref in refs if ref not in product.refs]
            why = repeated_row_problem(others, {c: cells[c][product.first] for c in others},
                                       {c: cells[c][i] for c in others}, product.first + 1, bool(new))
            if why:
                problems.append(RowProblem(row, pid, shown, why))
            else:
                for ref in new:
                    product.refs[ref] = row
        else:
            products[pid] = _Product(pid, i, {ref: row for ref in refs})
    for product in products.values():
        if not product.refs:
            problems.append(RowProblem(product.first + 1, product.id, "", "no photo named"))
    return [p for p in products.values() if p.refs], problems


@dataclass
class _Photos:
    """The usable photos of a table, in product order then photo order (parallel lists)."""

    positions: list[int] = field(default_factory=list)  # the product's first row (0-based)
    paths: list[Path] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # the 1-based row that named the photo
    refs: list[str] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)  # the photo's place among the product's


def _resolve_photos(products: list[_Product], finder: "_FileFinder",
                    fetch: "Callable[[list[str]], Mapping[str, Fetched]] | None" = None,
                    ) -> tuple[_Photos, list[RowProblem], list[str]]:
    """Each product's photos found, or each photo's problem, and the photo URLs left unfetched.
    The photo URLs of all products are fetched first, all together (``fetch``); without it, and
    none fetched already (``finder.fetched``), URL photos are left out, neither rows nor problems."""
    urls = list(dict.fromkeys(ref for p in products for ref in p.refs if _is_http(ref)))
    if urls and fetch is not None:
        finder.fetched = fetch(urls)
    skip = bool(urls) and finder.fetched is None
    out, problems = _Photos(), []
    for product in products:
        for number, (ref, row) in enumerate(product.refs.items()):
            if skip and _is_http(ref):
                continue
            found, reason = finder.find(ref)
            if found is None:
                problems.append(RowProblem(row, product.id, ref, reason, photo=True))
                continue
            out.positions.append(product.first)
            out.paths.append(found)
            out.rows.append(row)
            out.refs.append(ref)
            out.numbers.append(number)
    return out, problems, urls if skip else []


def _images_root(images: str | os.PathLike | None, source: Path | None) -> Path:
    """The folder photo paths are relative to: ``images``, else the catalogue's folder (or its
    ``images/`` subfolder)."""
    if images is None:
        base = source.parent if source is not None else Path.cwd()
        return base / "images" if (base / "images").is_dir() else base
    root = Path(images)
    if not root.is_dir():
        raise CatalogError(f"images folder not found: {root}")
    return root


@dataclass
class _Fetch:
    """Fetches a catalogue's photo URLs (reading/fetch, imported only then); ``folder`` is the
    cache they went to, once they did."""

    photo_cache: str | os.PathLike | None
    fetcher: "PhotoFetcher | None"
    private_urls: bool
    show_progress_bar: bool | None
    folder: Path | None = None

    def __call__(self, urls: list[str]) -> "Mapping[str, Fetched]":
        from lookalike.reading.fetch import fetch_photos

        got, self.folder = fetch_photos(urls, photo_cache=self.photo_cache, fetcher=self.fetcher,
                                        private_urls=self.private_urls, show_progress_bar=self.show_progress_bar)
        return got


def load_catalog(
    path: str | os.PathLike | pd.DataFrame,
    *,
    images: str | os.PathLike | None = None,
    id_column: str = DEFAULT_ID_COLUMN,
    image_column: str | Sequence[str] = DEFAULT_IMAGE_COLUMN,
    image_separator: str = DEFAULT_IMAGE_SEPARATOR,
    parent_column: str | None = None,
    allow_outside_images: bool = False,
    photo_cache: str | os.PathLike | None = None,
    fetcher: "PhotoFetcher | None" = None,
    private_urls: bool = True,
    show_progress_bar: bool | None = None,
    fetch_urls: bool = True,
) -> Catalog:
    """Read a catalogue and resolve each product's photos.

    A product's photos are named by ``image_column`` (one column or several), each cell split by
    ``image_separator`` (``|`` by default; Magento and Merchant Center write ``,``; ``""``: a cell
    is one photo), and by every later row with the same id (the long layout: see
    :func:`merge_products`). A product is indexed when one of its photos can be used; each photo
    that can't is a :class:`RowProblem` of the row that named it. ``parent_column`` names the
    column of a variant's parent (kept in :attr:`Catalog.parent_column`: searches then leave a
    product's siblings out).

    ``images`` is the folder that image paths are relative to (default: the catalogue's
    folder, then its ``images/`` subfolder); a photo not found there is looked up by file
    name anywhere below it, as in the Kaggle layout. Rows with an empty or repeated id, rows
    cut short (fewer cells than the header: see :class:`TableFile`), or rows without a photo
    on disk, are returned as :class:`RowProblem` s, never dropped silently.

    Photos must resolve inside the images folder (links included): an absolute path, a
    ``../`` path or a link to a file elsewhere is a row problem, unless
    ``allow_outside_images=True``. The resolved folder is kept as ``Catalog.images_root``
    so a server can check again, at serve time, that it hands out only those files.

    ``http(s)://`` photos are fetched, all of a catalogue's together, into the photo cache
    (``photo_cache``, default ``cache_dir()/photos``; or ``fetcher``, a
    :class:`~lookalike.reading.fetch.PhotoFetcher` with its own limits): such a row's photo is
    its cached file, and ``Catalog.photo_cache`` the folder, the second root of those rows
    only; a photo that can't be fetched is the row's problem (``HTTP 404``, ``timeout after
    30 s``, ``not an image ...``). A URL fetched before is fetched again only if it changed
    (``If-None-Match``/``If-Modified-Since``). ``private_urls=False`` refuses URLs of hosts at
    loopback, private, link-local or reserved addresses. ``fetch_urls=False`` fetches none: their
    photos are left out, listed in ``Catalog.unfetched`` for whoever fetches them (the ray
    engine's actors) with ``Catalog.fetch_settings`` into ``Catalog.photo_cache``; then
    :meth:`Catalog.with_fetched` is the catalogue this function would have read.
    """
    df, source, read = _read(path)
    image_columns = image_columns_of(image_column)
    _check_named_columns(df, id_column, image_columns, parent_column)
    finder = _FileFinder(_images_root(images, source), allow_outside=allow_outside_images)
    ids = df[id_column].astype(str).str.strip()
    products, problems = merge_products(ids.tolist(), df, image_columns, image_separator, read)
    if fetcher is not None:
        private_urls = fetcher.settings.private_urls
    settings = FetchSettings(private_urls=private_urls) if fetcher is None else fetcher.settings
    pending = _Pending(df, source, ids, products, problems, finder, dict(
        id_column=id_column, image_column=image_columns[0], image_columns=image_columns,
        image_separator=image_separator, parent_column=parent_column, allow_outside_images=allow_outside_images,
        private_urls=private_urls, sha256=file_sha256(source) if source is not None else ""))
    if not fetch_urls:  # a fetcher given lends its folder and limits (not its transport: it stays here)
        return _assemble(pending, deferred=(photo_cache if fetcher is None else fetcher.folder, settings))
    fetch = _Fetch(photo_cache, fetcher, private_urls, show_progress_bar)
    return _assemble(pending, fetch=fetch)


@dataclass
class _Pending:
    """A catalogue read and merged into products, its photos not yet resolved: what
    :func:`_assemble` makes a :class:`Catalog` of, again once its photo URLs are fetched."""

    df: pd.DataFrame
    source: Path | None
    ids: pd.Series
    products: list[_Product]
    problems: list[RowProblem]  # of rows (merging), not of photos
    finder: _FileFinder
    fields: dict[str, object]  # Catalog's fields as load_catalog was asked
    renumber: tuple[Callable[[int], int], list[RowProblem], int] | None = None


def _assemble(pending: _Pending, *, fetch: "_Fetch | None" = None, fetched: "Mapping[str, Fetched] | None" = None,
              folder: Path | None = None,
              deferred: "tuple[str | os.PathLike | None, FetchSettings] | None" = None) -> Catalog:
    """The catalogue of ``pending``: its photos resolved, those of URLs by ``fetch`` (fetched now),
    ``fetched`` (fetched already, into ``folder``), or, with ``deferred`` (the cache folder and the
    settings to fetch them with later), left out and listed in :attr:`Catalog.unfetched`."""
    finder = pending.finder
    finder.fetched = fetched
    photos, missing, unfetched = _resolve_photos(pending.products, finder, fetch)
    if fetch is not None:
        folder = fetch.folder
    if unfetched and deferred is not None:
        from lookalike.reading.fetch import PhotoCache

        folder = PhotoCache(deferred[0]).folder  # made and resolved here: the actors get its absolute path
    problems = sorted(pending.problems + missing, key=lambda p: p.row)
    table = pending.df.iloc[photos.positions].copy()
    id_column = str(pending.fields["id_column"])
    table[id_column] = pending.ids.iloc[photos.positions].values
    table = table.reset_index(drop=True)
    if problems:
        logger.info("%d problems in %d catalogue rows", len(problems), len(pending.df))
    return Catalog(
        table=table,
        image_paths=photos.paths,
        rows=photos.rows,
        problems=problems,
        source=pending.source,
        total_rows=len(pending.df),
        images_root=finder.real_root,
        photo_cache=folder,
        refs=photos.refs,
        photo_numbers=photos.numbers,
        unfetched=unfetched,
        fetch_settings=deferred[1] if unfetched and deferred is not None else None,
        _pending=pending,
        **pending.fields,  # type: ignore[arg-type]  # (the fields load_catalog was given, each of its type)
    )


def _read(path: str | os.PathLike | pd.DataFrame) -> tuple[pd.DataFrame, Path | None, TableFile | None]:
    """A catalogue as text: (table, its file, the file as read) — no file for a table given."""
    if isinstance(path, pd.DataFrame):
        _check_unique_columns([str(c) for c in path.columns], "the catalogue table")
        return _as_text(path), None, None
    read = read_table_file(Path(path))
    return read.table, Path(path), read


def _check_named_columns(df: pd.DataFrame, id_column: str, image_columns: Sequence[str],
                         parent_column: str | None) -> None:
    wanted = [(id_column, "id"), *((c, "image") for c in image_columns)]
    for col, what in wanted + ([(parent_column, "parent")] if parent_column else []):
        if col not in df.columns:
            raise CatalogError(f"catalogue has no {what} column {col!r}; its columns are: {', '.join(df.columns)}")


def image_columns_of(image_column: str | Sequence[str]) -> tuple[str, ...]:
    """One image column or several, as a tuple (refused when empty)."""
    columns = (image_column,) if isinstance(image_column, str) else tuple(str(c) for c in image_column)
    if not columns:
        raise CatalogError("give at least one image column")
    return columns
