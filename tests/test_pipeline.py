"""build(): the index folder, its manifest, incremental updates and interrupted builds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from layout import base, edit_record, record, report_path

from lookalike import (
    IndexFormatError,
    InvalidQueryError,
    Recommender,
    build,
    demo_catalog,
    get_encoder,
)
from lookalike.folder.artifacts import FORMAT_VERSION
from lookalike.reading.catalog import file_sha256

DEMO = demo_catalog()
DEMO_IMAGES = DEMO.parent / "images"


def _catalogue(folder: Path, rows: slice) -> Path:
    """Real demo products ``rows`` with their photos copied into ``folder/images``."""
    table = pd.read_csv(DEMO, dtype=str, keep_default_na=False).iloc[rows]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name in table["Image"]:
        shutil.copy(DEMO_IMAGES / name, folder / "images" / name)
    table.to_csv(folder / "catalog.csv", index=False)
    return folder / "catalog.csv"


def _snapshot(index: Path) -> dict[str, bytes]:
    return {str(f.relative_to(index)): f.read_bytes() for f in sorted(index.rglob("*")) if f.is_file()}


def _strays(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".building-" in p.name or ".old-" in p.name)


@pytest.fixture
def small(tmp_path: Path, encoder) -> tuple[Path, Path]:
    """Twenty real products built once: (catalogue, index)."""
    csv = _catalogue(tmp_path / "cat", slice(0, 20))
    out = tmp_path / "index"
    build(csv, out, encoder=encoder, show_progress_bar=False, batch_size=8)
    return csv, out


# -- the folder and its manifest ------------------------------------------------------------
def test_manifest_and_layout(small, encoder):
    csv, out = small
    assert (out / "CURRENT").read_text() == "1\n"
    for name in ("vectors.npy", "colour.npy", "metadata.parquet", "projection.npz"):
        assert (base(out) / name).is_file(), name
    assert report_path(out).is_file()
    m = record(out)
    assert m["format"] == "lookalike-index" and m["format_version"] == FORMAT_VERSION == 2
    assert m["generation"] == 1 and m["operation"] == {"kind": "build"} and len(m["segments"]) == 1
    for name, rec in m["segments"][0]["files"].items():  # every file has its checksum record
        data = (base(out) / name).read_bytes()
        assert rec["size"] == len(data) and len(rec["sha256"]) == 64 and isinstance(rec["crc32"], int)
    assert m["model"]["name"] == encoder.name and m["model"]["pooling"] == encoder.pooling
    assert m["model"]["dim"] == encoder.dim and m["model"]["input_size"] == encoder.preprocess.size == 256
    assert m["model"]["trim"] is True and m["model"]["resize"] == "pad"
    assert m["model"]["resize"] == encoder.preprocess.resize
    # the runtime this machine's calibration chose, and the figures it was chosen on
    assert m["model"]["runtime"] == encoder.engine in ("onnx", "openvino")
    assert m["model"]["calibration"]["photos_per_s"][m["model"]["runtime"]] > 0
    assert m["model"]["weights"].startswith("efficientnet-lite0")
    assert m["dim"] == np.load(base(out) / "vectors.npy").shape[1]
    assert m["metric"] == "cosine" and m["rows"] == 20 and m["index"]["backend"] == "exact"
    assert m["build"]["batch_size"] == 8 and "workers" in m["build"] and "seconds" in m["build"]
    assert m["catalog"]["sha256"] == file_sha256(csv)
    assert m["catalog"]["rows_total"] == 20 and m["catalog"]["id_column"] == "ProductId"
    assert m["catalog"]["image_column"] == "Image" and "Gender" in m["catalog"]["columns"]
    assert m["report"] == {"indexed": 20, "skipped": 0}
    assert "lookalike_version" in m and "created" in m and "colour_weight" in m


def _gram(vectors: np.ndarray) -> np.ndarray:
    return vectors @ vectors.T


def test_rows_line_up_with_metadata(small, encoder):
    """Row i of vectors.npy is the photo of row i of metadata.parquet."""
    _, out = small
    vectors = np.load(base(out) / "vectors.npy")
    meta = pd.read_parquet(base(out) / "metadata.parquet")
    assert vectors.dtype == np.float32 and vectors.shape[0] == 20
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # cosine: unit rows
    table = pd.read_csv(DEMO, dtype=str).head(20)
    assert meta["ProductId"].tolist() == table["ProductId"].tolist()
    rec = Recommender.load(out, encoder=encoder)
    for i in (0, 7, 19):
        shape, _ = rec.embed_image(meta["_image"].iat[i])  # the photo, as a query
        shape = shape / np.linalg.norm(shape)
        assert float(shape @ vectors[i]) > 0.999
        assert Path(meta["_image"].iat[i]).name == table["Image"].iat[i]


def test_workers_and_batch_size_do_not_change_vectors(small, encoder, tmp_path):
    csv, out = small
    other = tmp_path / "other"
    build(csv, other, encoder=encoder, show_progress_bar=False, workers=1, batch_size=3)
    assert np.allclose(_gram(np.load(base(other) / "vectors.npy")), _gram(np.load(base(out) / "vectors.npy")), atol=1e-4)


def test_euclidean_build_ranks_by_distance(small, encoder, tmp_path):
    csv, _ = small
    eu = tmp_path / "eu"
    build(csv, eu, encoder=encoder, metric="euclidean", colour_weight=0.0, show_progress_bar=False)
    raw = np.load(base(eu) / "vectors.npy")
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)  # not normalised
    rec = Recommender.load(eu)
    res = rec.similar(rec.ids[0], k=5)
    scores = [r.score for r in res]
    assert all(s <= 0 for s in scores) and scores == sorted(scores, reverse=True)
    distances = np.linalg.norm(raw - raw[0], axis=1)
    nearest = np.argsort(distances)[1:6]
    assert res.ids == [rec.ids[i] for i in nearest]
    assert np.allclose(scores, -distances[nearest], atol=1e-4)


def test_bad_settings_are_refused_early(small, encoder, tmp_path):
    csv, _ = small
    out = tmp_path / "x"
    for kw, words in [
        ({"metric": "manhattan"}, "cosine, euclidean"),
        ({"backend": "annoy"}, "exact, hnsw"),
        ({"colour_weight": 1.5}, "between 0 and 1"),
        ({"metric": "euclidean", "colour_weight": 0.3}, "needs metric cosine"),
        ({"batch_size": 0}, "batch size"),
        ({"projection_dim": -5}, "0 \\(none\\) or a whole number >= 1"),
    ]:
        with pytest.raises(InvalidQueryError, match=words):
            build(csv, out, encoder=encoder, show_progress_bar=False, **kw)
    assert not out.exists()


# -- incremental builds -----------------------------------------------------------------------
def test_dhash_top_bit_is_common(small):
    """Stored as int64, about half the 64-bit hashes read back negative: updates must cope."""
    _, out = small
    stored = pd.read_parquet(base(out) / "metadata.parquet")["_dhash"]
    assert (stored < 0).any()


def test_update_reuses_unchanged_rows(small, encoder):
    csv, out = small
    before = np.load(base(out) / "vectors.npy")
    again = build(csv, out, encoder=encoder, update=True, show_progress_bar=False)
    assert again.reused == 20 and again.indexed == 20
    # reused rows are normalised again, which may move the last bit, nothing more
    assert np.allclose(np.load(base(out) / "vectors.npy"), before, rtol=0, atol=1e-6)
    assert record(out)["build"]["reused"] == 20


def test_update_encodes_only_new_and_changed_photos(small, encoder, monkeypatch):
    csv, out = small
    before = np.load(base(out) / "vectors.npy")
    # add five products and change one photo: only those six are encoded
    bigger = _catalogue(csv.parent, slice(0, 25))
    table = pd.read_csv(bigger, dtype=str)
    shutil.copy(DEMO_IMAGES / table["Image"].iat[24], csv.parent / "images" / table["Image"].iat[3])
    calls: list[int] = []
    original = encoder.encode_pixels

    def counting(pixels):
        calls.append(len(pixels))
        return original(pixels)

    monkeypatch.setattr(encoder, "encode_pixels", counting)
    grown = build(bigger, out, encoder=encoder, update=True, show_progress_bar=False)
    assert grown.indexed == 25 and grown.reused == 19 and sum(calls) == 6
    vectors = np.load(base(out) / "vectors.npy")
    assert np.allclose(np.delete(vectors[:20], 3, axis=0), np.delete(before, 3, axis=0), rtol=0, atol=1e-6)
    assert np.allclose(vectors[3], vectors[24], atol=1e-5)  # now the same photo as product 25
    rec = Recommender.load(out)
    assert len(rec) == 25 and rec.manifest["catalog"]["sha256"] == file_sha256(bigger)


def test_update_with_other_settings_encodes_everything(small, tmp_path):
    csv, out = small
    report = build(csv, out, encoder=get_encoder(pooling="avg"), update=True, show_progress_bar=False)
    assert report.reused == 0 and report.indexed == 20
    assert Recommender.load(out).manifest["model"]["pooling"] == "avg"


# -- interrupted builds ----------------------------------------------------------------------
def test_interrupted_encoding_leaves_previous_index(small, encoder, monkeypatch):
    csv, out = small
    before = _snapshot(out)
    calls = {"n": 0}
    original = encoder.encode_pixels

    def interrupt_midway(pixels):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(pixels)

    monkeypatch.setattr(encoder, "encode_pixels", interrupt_midway)
    with pytest.raises(KeyboardInterrupt):
        build(csv, out, encoder=encoder, batch_size=4, show_progress_bar=False)
    assert calls["n"] == 2
    assert _snapshot(out) == before
    assert _strays(out.parent) == []
    assert len(Recommender.load(out)) == 20


def test_interrupted_write_removes_staging_folder(small, encoder, monkeypatch):
    csv, out = small
    before = _snapshot(out)
    import lookalike.folder.store as store

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store.os, "replace", fail)  # the flip of CURRENT, the commit's last step
    with pytest.raises(KeyboardInterrupt):
        build(csv, out, encoder=encoder, show_progress_bar=False)
    assert _snapshot(out) == before
    assert _strays(out.parent) == []
    assert len(Recommender.load(out)) == 20


def test_never_overwrites_a_folder_that_is_not_an_index(small, encoder, tmp_path):
    csv, _ = small
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"keep me")
    with pytest.raises(IndexFormatError, match="not a lookalike index"):
        build(csv, precious, encoder=encoder, show_progress_bar=False)
    assert (precious / "holiday.jpg").read_bytes() == b"keep me"
    assert _strays(tmp_path) == []


# -- loading damaged or foreign indexes ----------------------------------------------------------
def _copy_index(out: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(out, target)
    return target


def _edit_manifest(index: Path, change) -> None:
    edit_record(index, change)


def test_wrong_format_version(small, tmp_path):
    _, out = small
    bad = _copy_index(out, tmp_path, "v99")
    _edit_manifest(bad, lambda m: m.update(format_version=99))
    with pytest.raises(IndexFormatError, match="format 99.*rebuild"):
        Recommender.load(bad)


def _overwrite(path: Path, at: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[at : at + len(data)] = data
    path.write_bytes(bytes(raw))


def _resave(path: Path, change) -> None:
    """Rewrite a file *and* its checksum record: damage the checksums can't see."""
    import hashlib
    import zlib

    change(path)
    index = path.parents[2]
    m = record(index)
    data = path.read_bytes()
    for seg in m["segments"]:
        if seg["name"] == path.parent.name:
            seg["files"][path.name] = {"size": len(data), "crc32": zlib.crc32(data) & 0xFFFFFFFF,
                                       "sha256": hashlib.sha256(data).hexdigest()}
    edit_record(index, lambda r: r.update(segments=m["segments"]))


def test_missing_or_damaged_files(small, tmp_path):
    """Every kind of damage is one IndexFormatError line, never a traceback or a silent answer."""
    _, out = small
    cases = {
        "no-vectors": lambda d: (base(d) / "vectors.npy").unlink(),
        "no-metadata": lambda d: (base(d) / "metadata.parquet").unlink(),
        "bad-vectors": lambda d: (base(d) / "vectors.npy").write_bytes(b"\x93NUMPY garbage"),
        "short-vectors": lambda d: np.save(base(d) / "vectors.npy", np.load(base(d) / "vectors.npy")[:5]),
        "overwritten-vectors": lambda d: _overwrite(base(d) / "vectors.npy", 1000, b"\x00\x01\x02\x03"),
        "nan-vectors": lambda d: _resave(base(d) / "vectors.npy", lambda p: np.save(
            p, np.full_like(np.load(p), np.nan))),
        "truncated-projection": lambda d: (base(d) / "projection.npz").write_bytes(
            (base(d) / "projection.npz").read_bytes()[:100]),
        "truncated-projection-resaved": lambda d: _resave(base(d) / "projection.npz", lambda p: p.write_bytes(
            p.read_bytes()[:100])),
        "hidden-column-gone": lambda d: _resave(base(d) / "metadata.parquet", lambda p: pd.read_parquet(p).drop(
            columns=["_sha1"]).to_parquet(p)),
        "no-current": lambda d: (d / "CURRENT").unlink(),
        "garbage-current": lambda d: (d / "CURRENT").write_text("seven"),
        "current-ahead": lambda d: (d / "CURRENT").write_text("9\n"),
        "bad-generation": lambda d: (d / "generations" / "1.json").write_text("{not json"),
        "other-json": lambda d: (d / "generations" / "1.json").write_text('{"format": "something-else"}'),
        "id-column-malformed": lambda d: _edit_manifest(d, lambda m: m["catalog"].update(id_column=["x"])),
        "model-malformed": lambda d: _edit_manifest(d, lambda m: m.update(model="efficientnet")),
        "state-gone": lambda d: (d / "generations" / "1.state.npy").unlink(),
    }
    for name, damage in cases.items():
        bad = _copy_index(out, tmp_path, name)
        damage(bad)
        with pytest.raises(IndexFormatError) as err:
            Recommender.load(bad)
        assert "\n" not in str(err.value), name
    with pytest.raises(IndexFormatError, match="index not found"):
        Recommender.load(tmp_path / "nowhere")
    with pytest.raises(IndexFormatError, match="vectors.npy is missing"):
        Recommender.load(tmp_path / "no-vectors")
    with pytest.raises(IndexFormatError, match="checksum"):
        Recommender.load(tmp_path / "overwritten-vectors")
    with pytest.raises(IndexFormatError, match="NaN"):
        Recommender.load(tmp_path / "nan-vectors")


def test_verify_reads_every_byte(small, tmp_path):
    from lookalike.folder.store import Store

    _, out = small
    assert Store(out).verify() == []
    bad = _copy_index(out, tmp_path, "flipped")
    path = base(bad) / "colour.npy"
    _resave(path, lambda p: None)  # a valid record...
    m = record(bad)
    m["segments"][0]["files"]["colour.npy"]["sha256"] = "0" * 64  # ...but not the sha256 of the bytes
    edit_record(bad, lambda r: r.update(segments=m["segments"]))
    assert any("colour.npy" in p for p in Store(bad).verify())
    Recommender.load(bad)  # the cheap check on load (size + crc32) passes: only --verify reads the sha256


def test_format_1_index_still_loads(small, tmp_path):
    """lookalike 0.1 wrote manifest.json and the arrays at the top of the folder."""
    _, out = small
    old = tmp_path / "v1"
    old.mkdir()
    m = record(out)
    for name in ("vectors.npy", "colour.npy", "projection.npz"):
        shutil.copy(base(out) / name, old / name)
    rec = Recommender.load(out)
    rec.metadata.to_parquet(old / "metadata.parquet", index=False)
    legacy = {k: v for k, v in m.items() if k not in ("segments", "state", "report_file", "operation",
                                                      "generation", "parent", "projection_segment")}
    legacy["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(legacy))
    again = Recommender.load(old)
    assert again.generation == 0 and again.ids == rec.ids
    assert again.similar(rec.ids[0], k=5).ids == rec.similar(rec.ids[0], k=5).ids
    legacy["format_version"] = 99
    (old / "manifest.json").write_text(json.dumps(legacy))
    with pytest.raises(IndexFormatError, match="format 99"):
        Recommender.load(old)


def test_index_of_another_model(small, tmp_path):
    _, out = small
    bad = _copy_index(out, tmp_path, "other-model")
    _edit_manifest(bad, lambda m: m["model"].update(name="clip-vit"))
    with pytest.raises(IndexFormatError, match="clip-vit"):
        Recommender.load(bad)
    built = record(out)["model"]["pooling"]
    other = "max" if built != "max" else "avg"
    with pytest.raises(IndexFormatError, match=f"efficientnet-lite0/{built}"):
        Recommender.load(out, encoder=get_encoder(pooling=other))
