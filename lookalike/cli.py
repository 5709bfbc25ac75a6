"""The ``lookalike`` command: parses arguments, calls the library, prints, maps errors to exit codes.

Exit codes (:data:`EXIT_CODES`): 0 done, every row applied; 1 a user error (one line on stderr,
nothing changed); 2 a command line argparse can't parse (usage and one line); 3 done, but some
rows were refused (``build``, ``add``, ``remove``, ``sync``: the summary and the report say which
and why); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["main", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_ROWS_REFUSED", "EXIT_INTERRUPTED", "EXIT_CODES"]

logger = logging.getLogger("lookalike.cli")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # argparse's own
EXIT_ROWS_REFUSED = 3
EXIT_INTERRUPTED = 130
#: what each exit status means, as ``lookalike --help`` lists them
EXIT_CODES = {
    EXIT_OK: "done; every row applied",
    EXIT_ERROR: "a user error: one line on stderr, nothing changed",
    EXIT_USAGE: "a command line that can't be parsed (unknown option, missing argument)",
    EXIT_ROWS_REFUSED: "done, but some rows were refused (build, add, remove, sync): the summary lists them "
                       "with their reasons",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
_EPILOG = "exit status:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())
_ROWS_EPILOG = f"exit status {EXIT_ROWS_REFUSED} when some rows were refused (0 when every row was applied)"


def _where(items: Sequence[str] | None) -> list[Any]:
    """``--where`` conditions (:func:`lookalike.search.conditions.parse_condition`)."""
    from lookalike.search.conditions import parse_condition

    return [parse_condition(item, name="--where") for item in items or ()]


def _model_name(text: str) -> str:
    """A built-in model's name, ``onnx:PATH`` or ``hf:DIR`` (checked when the model is made, with one line)."""
    from lookalike.encoders import MODELS, is_own_model

    if text in MODELS or is_own_model(text):
        return text
    raise argparse.ArgumentTypeError(f"unknown model {text!r}; choose one of {', '.join(sorted(MODELS))}, "
                                     "onnx:PATH for an ONNX model of your own or hf:DIR for a Hugging Face "
                                     "folder (docs/models.md)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, not {value}")
    return value


def _whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a number >= 1, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, not {value}")
    return value


def _weight(text: str) -> float:
    from lookalike.config import check_colour_weight
    from lookalike.errors import InvalidQueryError

    try:
        return check_colour_weight(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, not {text!r}") from None
    except InvalidQueryError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, not {text}") from None


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--same", action="append", default=[], metavar="COL",
                   help="keep results to the query's value of COL (e.g. Gender); repeatable")
    p.add_argument("--where", action="append", default=[], metavar="CONDITION",
                   help="keep results whose COL=VALUE (VALUE1,VALUE2 for any of several), COL!=VALUE, "
                        "COL<N, COL<=N, COL>N, COL>=N or COL=LOW..HIGH (inclusive; LOW.. or ..HIGH open); "
                        "a row without a number never meets a numeric one; repeatable, all must hold")
    p.add_argument("--colour-weight", type=_weight, default=None, metavar="W",
                   help="share of the score given to colour, 0..1 (default: the index's)")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="list products whose photos are near-identical to each other too")
    p.add_argument("--allow-siblings", action="store_true",
                   help="in an index with a parent column, list the query's siblings (variants of its parent) too")
    p.add_argument("--collapse-parent", action="store_true",
                   help="at most one product of each parent in a list")
    p.add_argument("--boost", action="append", default=[], metavar="TARGET:OP W",
                   help="raise or lower scores: CONDITION:+W adds W where the condition holds (in_stock=yes:+0.05), "
                        "CONDITION:*W multiplies by W, COLUMN:+W adds W x a numeric column's value, COLUMN:*W "
                        "multiplies by 1 + W x value; repeatable")
    p.add_argument("--max-per", action="append", default=[], metavar="COL=N",
                   help="at most N results with one value of COL (a brand, a parent, a type); repeatable")
    p.add_argument("--diversity", type=float, default=None, metavar="D",
                   help="0..1: choose results by maximal marginal relevance (0: the plain ranking)")
    p.add_argument("--explain", action="store_true",
                   help="each result's score in parts: shape, colour, each boost (and the rule that placed it)")
    p.add_argument("--no-defaults", action="store_true",
                   help="ignore the index's query defaults (lookalike settings)")
    p.add_argument("--no-rules", action="store_true", help="ignore the index's pinned and blocked pairs")


def _catalogue_options(b: argparse.ArgumentParser) -> None:
    """build's options about the catalogue: its columns and where its photos may come from."""
    from lookalike import DEFAULT_ID_COLUMN, DEFAULT_IMAGE_COLUMN
    from lookalike.config import DEFAULT_IMAGE_SEPARATOR

    b.add_argument("--id-column", default=DEFAULT_ID_COLUMN)
    b.add_argument("--image-column", action="append", default=None, metavar="COL",
                   help=f"the column naming a product's photos (default {DEFAULT_IMAGE_COLUMN}); repeatable: "
                        "a product's photos are those of every such column, main photo first")
    b.add_argument("--image-separator", default=DEFAULT_IMAGE_SEPARATOR, metavar="SEP",
                   help="what splits an image cell into several photos (default '|'; Magento and Merchant "
                        "Center write ','; '' for one photo a cell). Several rows with one id add their photos "
                        "to one product (the long layout)")
    b.add_argument("--layout", default=None, metavar="NAME",
                   help="read the catalogue as a platform exports it: shopify, magento, merchant, merchant-xml or "
                        "woocommerce (it names the id, photo and parent columns; docs/catalogues.md); later add "
                        "and sync read their files the same way")
    b.add_argument("--parent-column", default=None, metavar="COL",
                   help="the column naming a variant's parent product: products sharing a parent are not "
                        "recommended for one another (similar --allow-siblings to allow)")
    b.add_argument("--photo-cache", type=Path, default=None, metavar="DIR",
                   help="folder http(s) photos are fetched to, named by content, with their ETags "
                        "(default: $LOOKALIKE_CACHE_DIR/photos)")
    b.add_argument("--no-private-urls", action="store_true",
                   help="refuse photo URLs of hosts at loopback, private, link-local or reserved addresses "
                        "(recorded: later add and sync keep to it)")
    b.add_argument("--allow-outside-images", action="store_true",
                   help="index photos named by absolute paths, ../ paths or links that lead outside --images "
                        "(refused by default; `lookalike serve` then serves those files too)")
    b.add_argument("--numeric", action="append", default=[], metavar="COL",
                   help="record COL as numeric even where some cells are not numbers (those rows never meet a "
                        "numeric --where); columns whose non-empty cells are all numbers are found by themselves; "
                        "repeatable")
    b.add_argument("--photo-credit", default="", metavar="TEXT",
                   help="whom the photos are credited to, recorded in the index; `lookalike app` shows it under "
                        "the photos (a rebuild without it keeps the index's)")


def _build_command(add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """build: a catalogue into an index folder."""
    from lookalike import (
        BACKENDS,
        DEFAULT_BATCH_SIZE,
        DEFAULT_ENGINE,
        DEFAULT_METRIC,
        DEFAULT_MODEL,
        DEFAULT_POOLING,
        DEFAULT_WORKERS,
        ENGINES,
        METRICS,
        MODELS,
        POOLINGS,
    )
    from lookalike.encoders import DEFAULT_RESIZE, DEFAULT_TRIM, RUNTIMES

    b = add_command("build", help="embed a catalogue's photos into an index folder", epilog=_ROWS_EPILOG)
    b.add_argument("catalog", type=Path, help="CSV, TSV or Parquet table, one row per product")
    b.add_argument("--images", type=Path, default=None,
                   help="folder the image paths are relative to (searched recursively by file name)")
    b.add_argument("--out", type=Path, required=True, help="index folder to write (replaced atomically)")
    _catalogue_options(b)
    b.add_argument("--model", default=DEFAULT_MODEL, type=_model_name, metavar="MODEL",
                   help=f"{', '.join(sorted(MODELS))} (default {DEFAULT_MODEL}); onnx:PATH: an ONNX model of "
                        "your own with its preprocessing in PATH.json; or hf:DIR: a local Hugging Face CLIP, "
                        "SigLIP or DINOv2 folder (extra hf; CLIP and SigLIP answer similar --text) (docs/models.md)")
    b.add_argument("--weights", type=Path, default=None, help="model weights file (resnet50: torchvision format)")
    b.add_argument("--pooling", default=DEFAULT_POOLING, choices=POOLINGS,
                   help="none = the reference's flattened map")
    b.add_argument("--resize", default=DEFAULT_RESIZE, choices=("squash", "pad", "crop"),
                   help="how photos become the square model input (default pad: fitted on white; "
                        "squash stretches them, as the reference)")
    b.add_argument("--trim", action=argparse.BooleanOptionalAction, default=DEFAULT_TRIM,
                   help="cut the studio background around each product first (default: on; "
                        "--no-trim keeps the whole photo, as the reference)")
    b.add_argument("--size", type=_positive_int, default=None, metavar="PX",
                   help="side of the square model input (default: the model's, 256 for efficientnet-lite0, "
                        "224 for resnet50)")
    b.add_argument("--precision", default=None, choices=("int8", "fp32"),
                   help="model arithmetic (default: int8 for efficientnet-lite0, about 2x faster at the "
                        "same quality; fp32 for resnet50)")
    b.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="what runs the model: auto = ONNX Runtime or OpenVINO, whichever a one-time "
                        "calibration on this machine measured faster (docs/benchmarks.md)")
    b.add_argument("--projection-dim", type=_whole_number, default=256, metavar="D",
                   help="PCA dimensions fitted on the catalogue (0: keep the pooled vectors)")
    b.add_argument("--metric", default=DEFAULT_METRIC, choices=METRICS)
    b.add_argument("--backend", default="exact", choices=BACKENDS,
                   help="vector index (hnsw needs the faiss extra, milvus the milvus extra)")
    b.add_argument("--milvus-uri", default=None, metavar="URI",
                   help="with --backend milvus: a .db path (Milvus Lite) or http://host:19530 (token in "
                        "$LOOKALIKE_MILVUS_TOKEN)")
    b.add_argument("--collection", default=None, help="Milvus collection name prefix (default: the folder's name)")
    b.add_argument("--colour-weight", type=_weight, default=None, metavar="W",
                   help="default share of the score given to colour, 0..1")
    b.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE)
    b.add_argument("--workers", type=_positive_int, default=DEFAULT_WORKERS, help="photo-decoding threads")
    b.add_argument("--update", action="store_true",
                   help="reuse the vectors of unchanged products from the existing index at --out")
    b.add_argument("--engine", default=DEFAULT_ENGINE, choices=ENGINES,
                   help="where photos are fetched, decoded and embedded: this process (local) or Ray "
                        "(ray, needs the ray extra: photo URLs fetched by Ray tasks, photos embedded by Ray Data "
                        "actors; same index)")
    b.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to join with --engine ray (auto, HOST:6379 or ray://HOST:10001); default: "
                        "a private Ray on this machine, listening on loopback only, stopped after the build")
    b.add_argument("--actors", type=_positive_int, default=None, metavar="N",
                   help="Ray actors with --engine ray, each loading the model once (default: one per CPU)")


def _change_commands(add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """add, remove, sync, compact: the living catalogue."""
    ad = add_command("add", help="add or change products of an index (no rebuild)", epilog=_ROWS_EPILOG)
    ad.add_argument("index", type=Path)
    ad.add_argument("rows", type=Path, help="CSV, TSV or Parquet in the catalogue's schema")
    ad.add_argument("--images", type=Path, default=None,
                    help="folder the photo paths are relative to (default: the build's)")
    ad.add_argument("--photo-cache", type=Path, default=None, metavar="DIR",
                    help="folder http(s) photos are fetched to; unchanged ones cost a 304 (default: the build's)")
    ad.add_argument("--no-private-urls", action="store_true",
                    help="refuse photo URLs at private addresses (default: as the build)")
    ad.add_argument("--format", default="table", choices=("table", "json"))

    rm = add_command("remove", help="remove products from an index by id", epilog=_ROWS_EPILOG)
    rm.add_argument("index", type=Path)
    rm.add_argument("--id", dest="ids", action="append", default=[], metavar="ID", help="repeatable")
    rm.add_argument("--ids-file", type=Path, default=None, help="one id per line")
    rm.add_argument("--format", default="table", choices=("table", "json"))

    sy = add_command("sync", help="bring an index in line with today's catalogue (the nightly job)",
                        epilog=_ROWS_EPILOG)
    sy.add_argument("index", type=Path)
    sy.add_argument("catalog", type=Path, help="today's full catalogue (CSV, TSV or Parquet)")
    sy.add_argument("--images", type=Path, default=None, help="folder the photo paths are relative to")
    sy.add_argument("--photo-cache", type=Path, default=None, metavar="DIR",
                    help="folder http(s) photos are fetched to; unchanged ones cost a 304 (default: the build's)")
    sy.add_argument("--no-private-urls", action="store_true",
                    help="refuse photo URLs at private addresses (default: as the build)")
    sy.add_argument("--max-removal", type=_weight, default=0.5, metavar="SHARE",
                    help="refuse when more than this share of the index would be removed (default 0.5)")
    sy.add_argument("--allow-mass-removal", action="store_true", help="remove however many products vanished")
    sy.add_argument("--dry-run", action="store_true", help="say what would change; change nothing")
    sy.add_argument("--report", type=Path, default=None, metavar="OUT.csv", help="also write the per-row report")
    sy.add_argument("--format", default="table", choices=("table", "json"))

    co = add_command("compact", help="fold live changes and removals into one segment")
    co.add_argument("index", type=Path)

    st = add_command("settings", help="the index's query defaults: a default where, boosts, caps, diversity, "
                                      "colour weight (no rebuild)", epilog=_SETTINGS_EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    st.add_argument("index", type=Path)
    st.add_argument("--where", action="append", default=None, metavar="CONDITION",
                    help="a default condition (as similar --where); repeatable; replaces the defaults' conditions")
    st.add_argument("--boost", action="append", default=None, metavar="TARGET:OP W",
                    help="a default boost (as similar --boost); repeatable; replaces the default boosts")
    st.add_argument("--max-per", action="append", default=None, metavar="COL=N", help="a default cap; repeatable")
    st.add_argument("--diversity", type=float, default=None, metavar="D", help="the default diversity (0: off)")
    st.add_argument("--colour-weight", type=_weight, default=None, metavar="W", help="the index's colour weight")
    st.add_argument("--clear", action="store_true", help="remove every default first (then set those given)")
    st.add_argument("--format", default="table", choices=("table", "json"))

    ru = add_command("rules", help="pinned and blocked pairs: pin, block, list, remove (no rebuild)",
                     epilog=_RULES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ru.add_argument("index", type=Path)
    ru.add_argument("action", choices=("pin", "block", "list", "remove"))
    ru.add_argument("--for", dest="for_id", default=None, metavar="ID",
                    help="the product whose results the rule acts on (block: absent for every query)")
    ru.add_argument("--show", default=None, metavar="ID", help="pin: the product shown")
    ru.add_argument("--hide", default=None, metavar="ID", help="block: the product never shown")
    ru.add_argument("--rank", type=_positive_int, default=1, help="pin: the rank it is shown at (default 1)")
    ru.add_argument("--format", default="table", choices=("table", "json"))


def _query_commands(add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """similar, export, info, duplicates: reading an index."""
    from lookalike.config import DEFAULT_EXPORT_K

    s = add_command("similar", help="products that look like a product (or several, or a photo)")
    s.add_argument("index", type=Path)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--id", dest="ids", action="append", metavar="ID",
                   help="query product id; repeat to combine recently viewed products")
    g.add_argument("--image", type=Path, help="query photo file")
    g.add_argument("--text", default=None, metavar="WORDS",
                   help="query with words (\"red running shoes\"): an index built with --model hf:DIR of a CLIP "
                        "or SigLIP model")
    s.add_argument("--box", default=None, metavar="X,Y,W,H",
                   help="with --image: query with this region of the photo (pixels, or fractions of its width and "
                        "height when all four are at most 1)")
    s.add_argument("--not", dest="negative_ids", action="append", default=[], metavar="ID",
                   help="less like this product (repeatable): the query moves away from its look, and it is never "
                        "listed")
    s.add_argument("--not-image", dest="negative_images", action="append", default=[], type=Path, metavar="PHOTO",
                   help="less like this photo (repeatable)")
    s.add_argument("-k", type=_positive_int, default=5, help="number of results (default 5)")
    _add_filters(s)
    s.add_argument("--format", default="table", choices=("table", "json", "csv"))
    s.add_argument("--columns", default=None, help="metadata columns to show, comma-separated")
    s.add_argument("--sheet", type=Path, default=None, metavar="OUT.png",
                   help="also draw a contact sheet of the query and its results")

    e = add_command("export", help="the top-k table for every product (for a shop's site)")
    e.add_argument("index", type=Path)
    e.add_argument("out", type=Path, help="OUT.csv or OUT.parquet")
    e.add_argument("-k", type=_positive_int, default=DEFAULT_EXPORT_K, help=f"results per product (default {DEFAULT_EXPORT_K})")
    _add_filters(e)

    i = add_command("info", help="an index's size and settings")
    i.add_argument("index", type=Path)
    i.add_argument("--format", default="table", choices=("table", "json"))
    i.add_argument("--verify", action="store_true",
                   help="check every file against its recorded sha256 (exit 1 when anything is damaged)")

    d = add_command("duplicates", help="groups of products with identical or near-identical photos")
    d.add_argument("index", type=Path)
    d.add_argument("--exact", action="store_true", help="byte-identical photos only")
    d.add_argument("--format", default="table", choices=("table", "json"))


def _shell_commands(add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """serve, app: the HTTP API and the page."""
    v = add_command("serve", help="HTTP API over an index (extra: server)")
    v.add_argument("index", type=Path)
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--max-upload-mb", type=float, default=10.0, help="largest photo upload accepted")
    v.add_argument("--workers", type=_positive_int, default=None,
                   help="server processes, pre-forked (default: 2 on a machine with 2+ cores)")
    v.add_argument("--result-cache", type=int, default=4096, metavar="N",
                   help="answers of similar-by-id kept per worker (0: none); a change to the index empties it")
    v.add_argument("--write-token-file", type=Path, default=None, metavar="F",
                   help="turn on PUT/DELETE /products/{id} for requests bearing this token "
                        "(or set $LOOKALIKE_WRITE_TOKEN); writes are off without one")
    v.add_argument("--read-token-file", type=Path, default=None, metavar="F",
                   help="require this bearer token for every read but /health (or $LOOKALIKE_READ_TOKEN)")
    v.add_argument("--timeout-keep-alive", type=_seconds, default=None, metavar="S",
                   help="close a connection idle this long after a response (default 5)")
    v.add_argument("--timeout-headers", type=_seconds, default=None, metavar="S",
                   help="close a connection that has not sent a whole request line and headers this long "
                        "after connecting or starting its next request (default 10)")

    a = add_command("app", help="the web page over an index (extra: ui)")
    a.add_argument("index", type=Path)
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8501)
    a.add_argument("--photo-credit", default=None, metavar="TEXT",
                   help="shown under the photos (default: the credit the index records, if any; '' for none)")
    a.add_argument("--allow-writes", action="store_true",
                   help="let the page pin and block products (the index's rules); read-only without it "
                        "(or set LOOKALIKE_APP_WRITES=1)")


def _analysis_commands(add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """stats, calibrate, evaluate, tune, demo."""
    from lookalike import DEFAULT_MODEL, MODELS
    from lookalike.config import SCORINGS

    st = add_command("stats", help="what a catalogue holds: counts per gender, category, type, colour")
    st.add_argument("catalog", type=Path, help="catalogue table, or an index folder")
    st.add_argument("--out", type=Path, default=None, help="folder for PNG charts")
    st.add_argument("--by", default=None, help="column to split by (default: Gender if present)")
    st.add_argument("--format", default="table", choices=("table", "json"))

    ca = add_command("calibrate", help="which runtime runs the model fastest on this machine (kept; "
                                          "build and serve use it)")
    ca.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS))
    ca.add_argument("--precision", default=None, choices=("int8", "fp32"))
    ca.add_argument("--size", type=_positive_int, default=None, metavar="PX")
    ca.add_argument("--threads", type=_positive_int, default=None, help="intra-op threads (default: all cores)")
    ca.add_argument("--again", action="store_true", help="forget the kept measurement and measure anew")
    ca.add_argument("--format", default="table", choices=("table", "json"))

    ev = add_command("evaluate", help="P@k, recall@k and mAP@k against the catalogue's labels; "
                                      "--views: how often a product's other photos find it")
    ev.add_argument("index", type=Path, nargs="+", help="one index, or several with --compare")
    what = ev.add_mutually_exclusive_group(required=True)
    what.add_argument("--label", action="append", metavar="COL")
    what.add_argument("--views", action="store_true",
                      help="query with every photo of each product with two or more, that photo left out of the "
                           "index: R@1 and R@k of finding its product (no labels needed)")
    ev.add_argument("-k", type=_positive_int, default=5)
    ev.add_argument("--group-by", "--by", action="append", default=[], metavar="COL",
                    help="also score per value of COL (e.g. category); repeatable")
    ev.add_argument("--scoring", default=None, choices=SCORINGS,
                    help="with --views: a product scores by its best photo (default, as searches do) "
                         "or by the mean of its photos' scores")
    ev.add_argument("--format", default="table", choices=("table", "json"))
    ev.add_argument("--compare", action="store_true",
                    help="compare several indexes (or colour weights) and draw a chart")
    ev.add_argument("--colour-weights", default=None, metavar="W1,W2,...",
                    help="with --compare: also compare these colour weights")
    ev.add_argument("--chart", type=Path, default=None, metavar="OUT.png", help="where --compare draws")
    _add_filters(ev)

    t = add_command("tune", help="learn a projection from label columns; reports held-out quality")
    t.add_argument("index", type=Path)
    t.add_argument("--label", action="append", required=True, metavar="COL")
    t.add_argument("--out", type=Path, required=True, help="where to write the tuned index")
    t.add_argument("--same", action="append", default=[], metavar="COL",
                   help="evaluate within the query's value of COL (e.g. Gender)")
    t.add_argument("--holdout", type=float, default=0.2, help="share of products held out (default 0.2)")
    t.add_argument("--dim", type=_positive_int, default=64, help="discriminant dimensions")
    t.add_argument("--share", type=float, default=0.5, help="weight of the learned part, 0..1")
    t.add_argument("-k", type=_positive_int, default=5)
    t.add_argument("--format", default="table", choices=("table", "json"))

    m = add_command("demo", help="build the bundled sample catalogue and show recommendations")
    m.add_argument("--out", type=Path, default=None,
                   help="where to put the demo index (default: demo-index in your cache folder, beside the model "
                        "cache: $LOOKALIKE_CACHE_DIR, else $XDG_CACHE_HOME/lookalike, else ~/.cache/lookalike)")
    m.add_argument("--no-app", action="store_true", help="print results instead of opening the web page")
    m.add_argument("--port", type=int, default=8501)


def _parser() -> argparse.ArgumentParser:
    from lookalike import __version__

    parser = argparse.ArgumentParser(
        prog="lookalike", description="Visual 'more like this' recommendations for a product catalogue.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lookalike {__version__}")
    verbose: dict[str, Any] = {"action": "count", "help": "more logging (-vv for debug)"}
    quiet: dict[str, Any] = {"action": "store_true", "help": "only errors; no progress bars"}
    parser.add_argument("-v", "--verbose", default=0, **verbose)
    parser.add_argument("-q", "--quiet", **quiet)
    # the same two after the command (`lookalike build ... -q`); absent there, the ones before it count
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", default=argparse.SUPPRESS, **verbose)
    common.add_argument("-q", "--quiet", default=argparse.SUPPRESS, **quiet)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    for commands in (_build_command, _change_commands, _query_commands, _shell_commands, _analysis_commands):
        commands(add_command)
    return parser


def demo_index_path() -> Path:
    """Where ``lookalike demo`` puts its index: the user's own cache folder, beside the model cache."""
    from lookalike.config import cache_dir

    return cache_dir() / "demo-index"


# -- output helpers -----------------------------------------------------------------------
def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(no results)"
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [min(48, max(len(c), *(len(row[j]) for row in cells))) for j, c in enumerate(columns)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    lines = [fmt.format(*columns), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*(v[:48] for v in row)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _default_columns(rec: Any) -> list[str]:
    preferred = [c for c in ("Gender", "ProductType", "Colour", "ProductTitle") if c in rec.columns]
    if preferred:
        return preferred
    photos = rec.settings.catalog.photo_columns
    return [c for c in rec.columns if c != rec.id_column and c not in photos][:4]


class _CannotWrite(Exception):
    """An output that can't be written: one error line and exit code 1, before any work."""


def _check_writable(path: Path, *, folder: bool = False) -> None:
    """Fail at once when ``path`` can't be written: a file or folder in the way, a read-only place."""
    if folder and path.exists() and not path.is_dir():
        raise _CannotWrite(f"{path} exists and is not a folder")
    if not folder and path.is_dir():
        raise _CannotWrite(f"{path} is a folder")
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise _CannotWrite(f"can't write {path}: {parent} is not a folder")
    import tempfile

    try:  # permissions alone don't tell (root, read-only mounts): try it
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise _CannotWrite(f"can't write {path}: {exc.strerror or exc}") from None


# -- commands -----------------------------------------------------------------------------
def _quiet_ray(verbose: int) -> None:
    """Without -v, keep Ray's own start-up notes off the terminal (build --engine ray).

    Ray sets up its loggers when imported, so this imports it first; its C++ core logs straight
    to stderr unless RAY_BACKEND_LOG_LEVEL says otherwise. Failures still surface as errors.
    """
    if verbose:
        return
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:  # the library names the extra to install
        return
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _laid_out(args: argparse.Namespace) -> Any:
    """``build --layout``: the platform file read as a catalogue (``reading/layouts``), its
    columns named by the layout (naming them too is refused: one or the other)."""
    from lookalike import DEFAULT_ID_COLUMN
    from lookalike.config import DEFAULT_IMAGE_SEPARATOR
    from lookalike.errors import InvalidQueryError
    from lookalike.reading.catalog import file_sha256, load_catalog
    from lookalike.reading.layouts import read_layout

    if args.image_column or args.parent_column or args.id_column != DEFAULT_ID_COLUMN or \
            args.image_separator != DEFAULT_IMAGE_SEPARATOR:
        raise InvalidQueryError("--layout names the id, image and parent columns: leave out --id-column, "
                                "--image-column, --image-separator and --parent-column")
    laid = read_layout(args.catalog, args.layout)
    cat = load_catalog(laid.table, images=args.images or args.catalog.parent, **laid.options(),
                       allow_outside_images=args.allow_outside_images, photo_cache=args.photo_cache,
                       private_urls=not args.no_private_urls, show_progress_bar=None if not args.quiet else False,
                       fetch_urls=args.engine != "ray")  # the ray engine fetches photo URLs in its actors
    cat.source, cat.sha256, cat.layout = args.catalog, file_sha256(args.catalog), args.layout
    # rows as the file numbers them, and the file's rows the reader could not use (cut short)
    cat.renumber(laid.file_row, laid.problems,
                 max([*laid.rows, *(p.row for p in laid.problems)], default=cat.total_rows))
    return cat


def _layout_table(index: Path, rows: Path) -> Any:
    """A change's file as the index's layout reads it (the file itself when it has none)."""
    from lookalike.folder.store import Store

    layout = Store(index).snapshot().settings.catalog.layout
    if not layout:
        return rows
    from lookalike.errors import CatalogError
    from lookalike.reading.layouts import read_layout

    laid = read_layout(rows, layout)
    if laid.problems:  # a row left out of a change would read as a removal to sync: refuse it whole
        first = laid.problems[0]
        raise CatalogError(f"{rows.name}: {len(laid.problems)} row(s) can't be read (row {first.row}: {first.reason}); "
                           "nothing was changed. Export the file again")
    return laid.table


def _cmd_build(args: argparse.Namespace) -> int:
    from lookalike import DEFAULT_IMAGE_COLUMN, build

    _check_writable(args.out, folder=True)
    if args.engine == "ray":
        _quiet_ray(args.verbose)
    report = build(
        _laid_out(args) if args.layout else args.catalog, args.out, images=args.images, id_column=args.id_column,
        image_column=args.image_column or DEFAULT_IMAGE_COLUMN, image_separator=args.image_separator,
        parent_column=args.parent_column, allow_outside_images=args.allow_outside_images, photo_cache=args.photo_cache,
        private_urls=not args.no_private_urls, model=args.model, weights=args.weights, pooling=args.pooling, resize=args.resize, trim=args.trim,
        size=args.size,
        precision=args.precision, runtime=args.runtime, metric=args.metric,
        projection_dim=args.projection_dim or None, backend=args.backend, batch_size=args.batch_size,
        workers=args.workers, update=args.update,
        milvus_uri=args.milvus_uri, collection=args.collection, engine=args.engine, ray_address=args.ray_address,
        actors=args.actors, colour_weight=args.colour_weight, numeric=args.numeric,
        photo_credit=args.photo_credit, show_progress_bar=None if not args.quiet else False,
    )
    print(report.summary())
    return EXIT_ROWS_REFUSED if report.problems else EXIT_OK


def _print_change(report: Any, fmt: str, out: Path | None = None) -> int:
    if out is not None:
        _write_table(report.to_frame(), out)
    if fmt == "json":
        print(json.dumps({"operation": report.operation, "generation": report.generation,
                          "counts": report.counts(), "changes": report.to_frame().to_dict("records")}, indent=2))
    else:
        print(report.summary())
    return EXIT_ROWS_REFUSED if report.problems else EXIT_OK


def _cmd_add(args: argparse.Namespace) -> int:
    from lookalike.writing.writer import IndexWriter

    report = IndexWriter.open(args.index).upsert(_layout_table(args.index, args.rows), images=args.images,
                                                 photo_cache=args.photo_cache,
                                                 private_urls=False if args.no_private_urls else None,
                                                 show_progress_bar=None if not args.quiet else False)
    return _print_change(report, args.format)


def _cmd_remove(args: argparse.Namespace) -> int:
    from lookalike.errors import InvalidQueryError
    from lookalike.writing.writer import IndexWriter

    ids = list(args.ids)
    if args.ids_file is not None:
        try:
            ids += [line.strip() for line in args.ids_file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        except OSError as exc:
            raise InvalidQueryError(f"can't read {args.ids_file}: {exc.strerror or exc}") from None
    if not ids:
        raise InvalidQueryError("give --id ID (repeatable) or --ids-file FILE")
    return _print_change(IndexWriter.open(args.index).remove(ids), args.format)


def _cmd_sync(args: argparse.Namespace) -> int:
    from lookalike.writing.writer import IndexWriter

    report = IndexWriter.open(args.index).sync(
        _layout_table(args.index, args.catalog), images=args.images, max_removal=args.max_removal, allow_mass_removal=args.allow_mass_removal,
        dry_run=args.dry_run, photo_cache=args.photo_cache,
        private_urls=False if args.no_private_urls else None, show_progress_bar=None if not args.quiet else False,
    )
    if args.dry_run and args.format == "table":
        print("dry run: nothing was changed")
    return _print_change(report, args.format, args.report)


_SETTINGS_EPILOG = """\
examples:
  lookalike settings INDEX --where in_stock=yes --boost 'popularity:*0.01'
  lookalike settings INDEX --max-per Brand=2 --colour-weight 0.3
  lookalike settings INDEX --clear          (no defaults)
  lookalike settings INDEX                  (show them)
A query's own --where on a column replaces the default's on that column; its --boost of the
same target replaces the default's; similar/export --no-defaults ignore them all."""

_RULES_EPILOG = """\
examples:
  lookalike rules INDEX pin --for 1234 --show 5678 --rank 2
  lookalike rules INDEX block --for 1234 --hide 999
  lookalike rules INDEX block --hide 999    (never shown, for any query)
  lookalike rules INDEX list
  lookalike rules INDEX remove pin --for 1234 --show 5678   (or: remove block --hide 999)
A pinned product is shown when it passes the query's filters; a rule naming an unknown
product is refused (exit 1, nothing changed)."""


def _cmd_settings(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from lookalike.folder.manifest import QueryDefaults
    from lookalike.writing.writer import IndexWriter

    index = IndexWriter.open(args.index)
    given: dict[str, Any] = {k: tuple(v) for k, v in (("where", args.where), ("boost", args.boost),
                                                      ("max_per", args.max_per)) if v is not None}
    if args.diversity is not None:
        given["diversity"] = args.diversity or None  # 0: off
    if given or args.clear or args.colour_weight is not None:
        base = QueryDefaults() if args.clear else index.steering().defaults
        now = index.set_defaults(replace(base, **given), colour_weight=args.colour_weight)
    else:
        now = index.steering()
    if args.format == "json":
        print(json.dumps({k: v for k, v in now.to_dict().items() if k != "rules"}, indent=2))
        return 0
    d = now.defaults
    print(f"generation {now.generation}: colour weight {now.colour_weight:g}")
    print(f"  where:     {' AND '.join(d.where) or '(none)'}")
    print(f"  boost:     {', '.join(d.boost) or '(none)'}")
    print(f"  max per:   {', '.join(d.max_per) or '(none)'}")
    print(f"  diversity: {'(off)' if d.diversity is None else f'{d.diversity:g}'}")
    return 0


def _cmd_rules(args: argparse.Namespace) -> int:
    from lookalike.errors import InvalidQueryError
    from lookalike.folder.manifest import Rule
    from lookalike.writing.writer import IndexWriter

    index = IndexWriter.open(args.index)
    if args.action == "list":
        now = index.steering()
    else:
        kind = args.action if args.action != "remove" else None
        if kind is None:
            kind = "pin" if args.show is not None else "block"
        product = args.show if kind == "pin" else args.hide
        if product is None:
            raise InvalidQueryError(f"{args.action} needs {'--show ID' if kind == 'pin' else '--hide ID'}")
        if kind == "pin" and args.for_id is None:
            raise InvalidQueryError("pin needs --for ID: the product whose results show it")
        rule = Rule(kind, product.strip(), None if args.for_id is None else args.for_id.strip(), args.rank)
        now = index.change_rules(remove=[rule]) if args.action == "remove" else index.change_rules(add=[rule])
        print(f"{'removed ' if args.action == 'remove' else ''}{rule}: generation {now.generation}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps([r.to_json() for r in now.rules], indent=2))
    elif not now.rules:
        print("(no rules)")
    else:
        for n, r in enumerate(now.rules, start=1):
            print(f"{n:>3}  {r}")
    return 0


def _cmd_compact(args: argparse.Namespace) -> int:
    from lookalike.writing.writer import IndexWriter

    report = IndexWriter.open(args.index).compact()
    print(f"compacted {args.index} into generation {report.generation} in {report.seconds:.2f} s")
    return 0


def _write_table(table: Any, out: Path) -> None:
    """Write a CSV or Parquet file whole, or not at all; one error line when it can't be."""
    from lookalike.errors import InvalidQueryError

    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise InvalidQueryError(f"can write .csv or .parquet, not {out.name}")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".csv":
            table.to_csv(tmp, index=False, float_format="%.6f")
        else:
            table.to_parquet(tmp, index=False)
        os.replace(tmp, out)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise InvalidQueryError(f"can't write {out}: {exc.strerror or exc}") from None


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {"same": args.same, "where": _where(args.where), "colour_weight": args.colour_weight,
            "collapse_duplicates": not args.keep_duplicates, "siblings": args.allow_siblings,
            "collapse_parent": args.collapse_parent, "boost": args.boost, "max_per": args.max_per,
            "diversity": args.diversity, "explain": args.explain, "defaults": not args.no_defaults,
            "rules": not args.no_rules}


def _cmd_similar(args: argparse.Namespace) -> int:
    from lookalike.errors import InvalidQueryError
    from lookalike.search.recommender import Recommender

    if args.sheet:
        _check_writable(args.sheet)
    rec = Recommender.load(args.index)
    away = {"negative_ids": args.negative_ids, "negative_images": args.negative_images}
    if args.box is not None and args.image is None:
        raise InvalidQueryError("--box is a region of a photo: give it with --image")
    if args.ids:
        res = rec.similar(args.ids, k=args.k, **_filters(args), **away)
    elif args.text is not None:
        res = rec.similar(text=args.text, k=args.k, **_filters(args), **away)
    else:
        res = rec.similar(image=args.image, k=args.k, box=args.box, **_filters(args), **away)
    columns = args.columns.split(",") if args.columns else _default_columns(rec)
    for c in columns:
        rec.check_column(c)
    shown = [*columns, "matched_photo"] if rec.multi_photo else columns  # which of a product's photos matched
    if args.format == "json":
        print(json.dumps(res.to_dict(), indent=2))
    elif args.format == "csv":
        import csv

        w = csv.writer(sys.stdout)
        parts = list(dict.fromkeys(name for r in res for name in (r.explain or {})))
        ruled = args.explain or any(r.rule for r in res)
        w.writerow(["rank", "id", "score", *shown, *parts, *(["rule"] if ruled else [])])
        for r in res:
            w.writerow([r.rank, r.id, f"{r.score:.6f}", *({**r.metadata, "matched_photo": r.matched_photo}.get(c, "")
                                                           for c in shown),
                        *(f"{(r.explain or {}).get(name, 0.0):.6f}" for name in parts), *([r.rule] if ruled else [])])
    else:
        if args.ids:
            for pid in res.query["ids"]:
                p = rec.product(pid)
                print(f"query {pid}: " + " | ".join(p.get(c, "") for c in columns))
        elif args.text is not None:
            print(f"query text: {args.text}")
        else:
            print(f"query photo: {args.image}")
        rows = [{"rank": r.rank, "id": r.id, "score": f"{r.score:.4f}", **r.metadata, "matched_photo": r.matched_photo,
                 "rule": r.rule, "explain": _parts_text(r.explain)} for r in res]
        extra = (["explain"] if args.explain else []) + (["rule"] if any(r.rule for r in res) else [])
        print(_table(rows, ["rank", "id", "score", *shown, *extra]))
    if args.sheet:
        from lookalike.analysis.sheet import contact_sheet

        contact_sheet(rec, res, args.sheet, query_image=args.image)
        print(f"contact sheet: {args.sheet}", file=sys.stderr)
    return 0


def _parts_text(parts: dict[str, float] | None) -> str:
    """A score's parts on one line: ``shape 0.39 + colour 0.12 + in_stock=yes:+0.05 0.05``."""
    if not parts:
        return ""
    return " + ".join(f"{name.removeprefix('boost ')} {v:.3f}" for name, v in parts.items())


def _cmd_export(args: argparse.Namespace) -> int:
    from lookalike.errors import InvalidQueryError
    from lookalike.search.recommender import Recommender

    suffix = args.out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise InvalidQueryError(f"export writes .csv or .parquet, not {args.out.name}")
    _check_writable(args.out)
    rec = Recommender.load(args.index)
    table = rec.export(k=args.k, **_filters(args), show_progress_bar=None if not args.quiet else False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    if suffix == ".csv":
        table.to_csv(tmp, index=False, float_format="%.6f")
    else:
        table.to_parquet(tmp, index=False)
    os.replace(tmp, args.out)
    print(f"wrote {len(table)} rows ({table['query_id'].nunique()} products x up to {args.k}) to {args.out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from lookalike.errors import IndexFormatError
    from lookalike.folder.store import Store
    from lookalike.search.recommender import Recommender

    if args.verify:
        problems = Store(args.index).verify()
        damaged = [p for p in problems if not p.startswith("format-1")]
        for p in problems:
            print(p, file=sys.stderr)
        if damaged:
            raise IndexFormatError(f"{args.index} is damaged: {len(damaged)} file(s) do not match their record")
    rec = Recommender.load(args.index)
    record, s = rec.manifest, rec.settings
    if args.format == "json":
        print(json.dumps(record, indent=2))
        return 0
    size = sum(f.stat().st_size for f in Path(args.index).rglob("*") if f.is_file())
    op = (record.get("operation") or {}).get("kind", "build")  # the commit's own record, not a setting
    model = s.model
    lines = [
        ("index", str(args.index)),
        ("generation", f"{rec.generation} (made by {op}; {len(record.get('segments') or []) or 1} segment(s))"),
        ("rows", f"{len(rec)}" + (f" products, {rec.n_rows} photos" if rec.multi_photo else "")
                 + f" (of {s.catalog.rows_total} catalogue rows; {s.report.get('skipped', 0)} skipped)"),
        ("model", f"{model.name} / pooling {model.pooling} / {'trimmed, ' if model.trim else ''}{model.resize} "
                  f"{model.input_size}px / {model.precision} on {model.runtime or 'onnx'} / weights {model.weights}"),
        ("vectors", f"{s.dim}-d float32, metric {s.metric}, back end {s.index.backend}"),
        ("colour weight", str(s.colour_weight)),
        ("duplicates", f"{s.duplicates.get('rows', 0)} products in {s.duplicates.get('groups', 0)} photo groups"),
        ("catalogue", f"{s.catalog.path} (sha256 {(s.catalog.sha256 or '')[:12]})"),
        ("columns", ", ".join(rec.columns)
         + (f" (numbers: {', '.join(s.catalog.numeric_columns)})" if s.catalog.numeric_columns else "")),
        ("built", f"in {s.build.get('seconds', '?')} s by lookalike {record.get('lookalike_version', '?')}; "
                  f"this generation committed {s.created or '?'}"),
        ("size on disk", f"{size / 1e6:.1f} MB ({size / max(1, len(rec)):.0f} bytes per product)"),
    ]
    if args.verify:
        lines.append(("verified", "every file matches its sha256" if rec.generation else "no checksums (format 1)"))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")
    return 0


def _cmd_duplicates(args: argparse.Namespace) -> int:
    from lookalike.search.recommender import Recommender

    rec = Recommender.load(args.index)
    groups = rec.duplicates(near=not args.exact)
    if args.format == "json":
        print(json.dumps(groups, indent=2))
        return 0
    # a group is byte-identical when all its photos are one file's bytes, else near-identical
    # (re-encoded, resized or re-cropped copies; it may hold byte-identical ones too)
    exact = {pid: n for n, g in enumerate(rec.duplicates(near=False)) for pid in g}
    kinds = ["byte-identical" if g[0] in exact and len({exact.get(p) for p in g}) == 1 else "near-identical"
             for g in groups]
    title = "ProductTitle" if "ProductTitle" in rec.columns else None
    rows = [(kind, str(len(g)), rec.product(g[0]).get(title, "")[:44] if title else "", " ".join(g))
            for kind, g in zip(kinds, groups)]
    head = ("photos", "products", "title of the first" if title else "", "ids")
    widths = [max(len(r[j]) for r in [head, *rows]) for j in range(4)]
    for cells in [head, tuple("-" * w for w in widths), *rows]:
        line = f"{cells[0]:<{widths[0]}}  {cells[1]:>{widths[1]}}  " + (f"{cells[2]:<{widths[2]}}  " if title else "")
        print(line + cells[3])
    if not rows:
        print("(no groups)")
    near = kinds.count("near-identical")
    print(f"{sum(len(g) for g in groups)} products in {len(groups)} groups ({len(groups) - near} byte-identical, "
          f"{near} near-identical)", file=sys.stderr)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lookalike import build, demo_catalog
    from lookalike.demo import DEMO_PHOTO_CREDIT
    from lookalike.search.recommender import Recommender

    out = args.out or demo_index_path()
    report = build(demo_catalog(), out, photo_credit=DEMO_PHOTO_CREDIT,
                   show_progress_bar=None if not args.quiet else False)
    print(report.summary())
    rec = Recommender.load(out)
    first = "13683" if "13683" in rec else rec.ids[0]  # the reference tutorial's example
    res = rec.similar(first, k=5, same="Gender")
    p = rec.product(first)
    print(f"\nmore like {first} ({p.get('ProductTitle', '')}), same Gender:")
    print(_table([{"rank": r.rank, "id": r.id, "score": f"{r.score:.4f}", **r.metadata} for r in res],
                 ["rank", "id", "score", *_default_columns(rec)]))
    if args.no_app:
        return 0
    from lookalike.launch import run_app

    print(f"\nweb page: http://127.0.0.1:{args.port}  (Ctrl-C to stop)", flush=True)
    return run_app(out, port=args.port)


def _cmd_serve(args: argparse.Namespace) -> int:
    from lookalike.server import run_server

    timeouts = {name: value for name, value in (("timeout_keep_alive", args.timeout_keep_alive),
                                                 ("timeout_headers", args.timeout_headers)) if value is not None}
    return run_server(args.index, host=args.host, port=args.port,
                      max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), workers=args.workers,
                      write_token_file=args.write_token_file, read_token_file=args.read_token_file,
                      result_cache=max(0, args.result_cache), **timeouts)


def _cmd_app(args: argparse.Namespace) -> int:
    from lookalike.launch import run_app

    return run_app(args.index, host=args.host, port=args.port, photo_credit=args.photo_credit,
                   allow_writes=args.allow_writes)


def _cmd_stats(args: argparse.Namespace) -> int:
    from lookalike.analysis.stats import catalog_stats, format_stats, load_stats_table, save_charts

    table = load_stats_table(args.catalog)
    stats = catalog_stats(table, by=args.by)
    if args.format == "json":
        print(json.dumps(stats, indent=2))
    else:
        print(format_stats(stats))
    if args.out:
        for path in save_charts(table, args.out, by=args.by):
            print(f"chart: {path}", file=sys.stderr)
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from lookalike.encoders import get_encoder
    from lookalike.encoders.calibrate import calibrate, calibration_path

    enc = get_encoder(args.model, precision=args.precision, size=args.size, threads=args.threads)
    record = calibrate(enc, again=args.again)
    if args.format == "json":
        print(json.dumps(record, indent=2))
        return 0
    rates, cosines = record.get("photos_per_s", {}), record.get("min_cosine", {})
    print(f"{'runtime':<10} {'photos/s':>9} {'min cosine':>11}")
    for engine in dict.fromkeys([*rates, *cosines]):
        mark = "  <- chosen" if engine == record["runtime"] else ""
        print(f"{engine:<10} {rates.get(engine, float('nan')):>9.1f} {cosines.get(engine, float('nan')):>11.5f}{mark}")
    for engine, why in record.get("unavailable", {}).items():
        print(f"{engine:<10} unavailable: {why}")
    if record.get("error"):
        print(f"calibration failed ({record['error']}); ONNX Runtime is used")
    cpu = record.get("cpu", {})
    print(f"{enc.name} {enc.precision} at {enc.preprocess.size} px, {record.get('threads', '?')} threads, "
          f"on {cpu.get('model', '?')}; kept in {calibration_path(enc)}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from lookalike.analysis.evaluate import compare, format_scores
    from lookalike.errors import InvalidQueryError
    from lookalike.search.recommender import Recommender

    if args.views:
        return _cmd_evaluate_views(args)
    if args.scoring:
        raise InvalidQueryError("--scoring needs --views")
    weights = [float(w) for w in args.colour_weights.split(",")] if args.colour_weights else [args.colour_weight]
    if len(args.index) > 1 and not args.compare:
        raise InvalidQueryError("several indexes need --compare")
    runs = []
    for path in args.index:
        rec = Recommender.load(path)
        for w in weights:
            runs.append((rec, w))
    kw = dict(labels=args.label, k=args.k, same=args.same, where=_where(args.where),
              group_by=args.group_by, collapse_duplicates=not args.keep_duplicates, siblings=args.allow_siblings,
              collapse_parent=args.collapse_parent)
    results = compare(runs, **kw, show_progress_bar=False if args.quiet else None)
    if args.format == "json":
        print(json.dumps(results if args.compare else results[0]["scores"], indent=2))
    else:
        print(format_scores(results))
    if args.compare:
        from lookalike.analysis.evaluate import compare_chart

        chart = args.chart or Path("lookalike-compare.png")
        compare_chart(results, chart)
        print(f"chart: {chart}", file=sys.stderr)
    return 0


#: evaluate's options that --views does not take (it has no labels and no filters)
_NOT_WITH_VIEWS = ("same", "where", "compare", "colour_weights", "chart", "allow_siblings", "collapse_parent")


def _cmd_evaluate_views(args: argparse.Namespace) -> int:
    from lookalike.analysis.evaluate import evaluate_views
    from lookalike.errors import InvalidQueryError
    from lookalike.search.recommender import Recommender

    given = [name for name in _NOT_WITH_VIEWS if getattr(args, name)]
    if given:
        raise InvalidQueryError(f"--views takes no --{given[0].replace('_', '-')}")
    if len(args.index) > 1:
        raise InvalidQueryError("--views evaluates one index")
    scores = evaluate_views(Recommender.load(args.index[0]), k=(1, args.k), group_by=args.group_by,
                            colour_weight=args.colour_weight, scoring=args.scoring or "best",
                            collapse_duplicates=not args.keep_duplicates,
                            show_progress_bar=False if args.quiet else None)
    print(json.dumps(scores.to_dict(), indent=2) if args.format == "json" else scores.format())
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from lookalike.analysis.tune import tune

    info = tune(args.index, args.out, labels=args.label, same=args.same, holdout=args.holdout, dim=args.dim,
                share=args.share, k=args.k)
    if args.format == "json":
        print(json.dumps(info, indent=2))
        return 0
    print(f"fitted on {info['fitted_on']} products, judged on {info['held_out']} held out "
          f"(queries and candidates); wrote {args.out}")
    keys = [key for key in info["held_out_before"] if key.startswith("p@") or key.startswith("map@")]
    width = max(len(key) for key in keys)
    print(f"{'held out':<{width}}  {'before':>8}  {'after':>8}")
    for key in keys:
        print(f"{key:<{width}}  {info['held_out_before'][key]:>8.4f}  {info['held_out_after'][key]:>8.4f}")
    return 0


COMMANDS = {
    "add": _cmd_add,
    "remove": _cmd_remove,
    "sync": _cmd_sync,
    "compact": _cmd_compact,
    "settings": _cmd_settings,
    "rules": _cmd_rules,
    "tune": _cmd_tune,
    "serve": _cmd_serve,
    "app": _cmd_app,
    "stats": _cmd_stats,
    "evaluate": _cmd_evaluate,
    "calibrate": _cmd_calibrate,
    "build": _cmd_build,
    "similar": _cmd_similar,
    "export": _cmd_export,
    "info": _cmd_info,
    "duplicates": _cmd_duplicates,
    "demo": _cmd_demo,
}


def _setup_logging(verbose: int, quiet: bool) -> None:
    """Messages at WARNING (-v INFO, -vv DEBUG); progress bars unless -q."""
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    root = logging.getLogger()
    # one handler of ours however often main() runs in a process (tests, notebooks)
    for old in [h for h in root.handlers if getattr(h, "_lookalike_cli", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level)
    handler._lookalike_cli = True  # type: ignore[attr-defined]  # a mark to find our own handler again
    root.addHandler(handler)
    root.setLevel(level)
    # the library shows progress bars when its logger is at INFO or below
    logging.getLogger("lookalike").setLevel(logging.ERROR if quiet else min(level, logging.INFO))


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    import warnings

    from PIL import Image

    from lookalike.errors import LookalikeError

    # photos past Pillow's own pixel limit are refused by lookalike with one line; no warning on top
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

    try:
        return COMMANDS[args.command](args)
    except (LookalikeError, _CannotWrite, argparse.ArgumentTypeError) as exc:  # a bad value past argparse
        print(f"lookalike: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("lookalike: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:  # an output that failed while written (disk full, a folder removed meanwhile)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"lookalike: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR
