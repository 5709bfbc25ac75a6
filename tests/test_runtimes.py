"""Runtimes: ONNX Runtime and OpenVINO give the same vectors within the stated tolerance, and
the one-time calibration picks the faster of those that agree, keeps its record and says why."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lookalike import ModelError, demo_catalog, get_encoder
from lookalike.encoders import calibrate, runtimes
from lookalike.encoders.runtimes import engine_available

PHOTOS = sorted((demo_catalog().parent / "images").glob("*.jpg"))[:8]
needs_openvino = pytest.mark.skipif(not engine_available("openvino"), reason="extra openvino not installed")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@needs_openvino
@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_openvino_gives_onnxruntimes_vectors_within_tolerance(precision):
    ort = get_encoder(precision=precision, runtime="onnx").encode(PHOTOS)
    ov_enc = get_encoder(precision=precision, runtime="openvino")
    ov = ov_enc.encode(PHOTOS)
    assert ov_enc.engine == "openvino" and ov.shape == ort.shape and ov.dtype == np.float32
    assert _cosines(ov, ort).min() >= calibrate.TOLERANCE
    if precision == "fp32":  # fp32 arithmetic on both (bf16 is never allowed in): equal to rounding
        assert np.abs(ov - ort).max() <= 1e-3 * np.abs(ort).max()
    if precision == "int8":  # the runtimes differ far less than int8 differs from fp32
        fp32 = get_encoder(precision="fp32", runtime="onnx").encode(PHOTOS)
        assert _cosines(ov, ort).min() > _cosines(ort, fp32).min()


@needs_openvino
def test_openvino_serves_concurrent_threads():
    from concurrent.futures import ThreadPoolExecutor

    enc = get_encoder(runtime="openvino")
    alone = [enc.encode([p])[0] for p in PHOTOS[:4]]  # one at a time, as the threads below
    with ThreadPoolExecutor(4) as pool:  # one infer request per thread: no call sees another's output
        outs = list(pool.map(lambda i: enc.encode([PHOTOS[i % 4]]), range(16)))
    for i, out in enumerate(outs):
        assert np.allclose(out[0], alone[i % 4], atol=1e-6)


@needs_openvino
def test_openvino_keeps_its_folded_model_as_ir_and_loads_it_to_the_same_vectors(tmp_path, monkeypatch):
    """The second start compiles from the kept IR (no ONNX read, same vectors); a damaged IR
    is made again from the export."""
    import shutil

    import openvino as ov

    export = get_encoder(runtime="onnx").export()
    (tmp_path / "onnx").mkdir()
    shutil.copy2(export, tmp_path / "onnx" / export.name)
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path))
    first = get_encoder(runtime="openvino").encode(PHOTOS)  # from the ONNX file; keeps the IR
    kept = sorted((tmp_path / "openvino").glob("*-u8nhwc-*"))
    assert [p.suffix for p in kept] == [".bin", ".xml"]
    with monkeypatch.context() as m:
        m.setattr(ov.Core, "read_model", lambda *a, **k: pytest.fail("read the ONNX file again"))
        assert np.array_equal(get_encoder(runtime="openvino").encode(PHOTOS), first)
    kept[0].write_bytes(b"damaged")
    for blob in (tmp_path / "openvino").glob("*.blob"):  # else the compiled blob is all it reads
        blob.unlink()
    assert np.array_equal(get_encoder(runtime="openvino").encode(PHOTOS), first)
    assert kept[0].stat().st_size > 1000


@pytest.mark.parametrize("runtime", ["onnx", pytest.param("openvino", marks=needs_openvino)])
def test_an_encoder_with_streams_serves_its_callers_side_by_side_with_the_same_vectors(runtime):
    from concurrent.futures import ThreadPoolExecutor

    from lookalike.reading.images import model_input

    one = get_encoder(runtime=runtime)
    two = get_encoder(runtime=runtime, streams=2)
    pixels = np.stack([model_input(p, one.preprocess) for p in PHOTOS])
    want = one.encode_pixels(pixels)
    with ThreadPoolExecutor(2) as pool:
        halves = list(pool.map(two.encode_pixels, [pixels[:4], pixels[4:]] * 3))
    for i, got in enumerate(halves):
        assert np.allclose(got, want[:4] if i % 2 == 0 else want[4:], atol=1e-5 * np.abs(want).max())


@pytest.fixture
def record_at(tmp_path, monkeypatch):
    """Calibration records go to a fresh folder (the exports stay in the shared cache)."""
    path = tmp_path / "calibration.json"
    monkeypatch.setattr(calibrate, "calibration_path", lambda enc: path)
    return path


def test_calibration_measures_once_and_keeps_its_record(record_at, monkeypatch):
    enc = get_encoder()
    enc.encode(PHOTOS[:1])
    record = json.loads(record_at.read_text())
    assert enc.engine == record["runtime"] and enc.calibration == record
    assert record["min_cosine"]["onnx"] == pytest.approx(1.0)
    assert record["cpu"]["model"] and record["threads"] >= 1 and record["tolerance"] == calibrate.TOLERANCE
    if engine_available("openvino"):
        assert set(record["photos_per_s"]) == {"onnx", "openvino"} and record["rounds"] == calibrate.ROUNDS
        fastest = max(record["photos_per_s"], key=record["photos_per_s"].get)
        ratio = record["photos_per_s"][fastest] / record["photos_per_s"]["onnx"]
        assert record["runtime"] == (fastest if ratio >= calibrate.MARGIN else "onnx")

    def measure_again(enc):
        raise AssertionError("calibrated twice")

    monkeypatch.setattr(calibrate, "measure", measure_again)
    again = get_encoder()
    again.encode(PHOTOS[:1])
    assert again.engine == record["runtime"]


def test_the_runtime_is_resolved_once_without_a_session_and_the_session_runs_it(record_at):
    """resolve_runtime (what the ray engine pins in the settings its actors get) chooses from the
    record without opening a session; the session opened later runs that choice, not a record
    read again."""
    record_at.write_text(json.dumps({"runtime": "onnx"}))
    enc = get_encoder()
    assert enc.engine == "auto"
    assert enc.resolve_runtime() == "onnx" and enc._session is None and enc.engine == "onnx"
    record_at.write_text(json.dumps({"runtime": "openvino"}))  # changed meanwhile (another process)
    enc.encode(PHOTOS[:1])
    assert enc.engine == enc.resolve_runtime() == "onnx"
    assert get_encoder(runtime="openvino").resolve_runtime() == "openvino"  # forced: nothing to resolve
    assert get_encoder(runtime="torch").resolve_runtime() == "torch"


@needs_openvino
def test_a_faster_runtime_whose_vectors_disagree_is_not_chosen(record_at, monkeypatch):
    real = runtimes.open_session

    class Garbled:
        engine = "openvino"

        def __init__(self, session):
            self.session = session

        def run(self, pixels):  # fast, but not the model: shuffled channels
            out = self.session.run(pixels)
            return out[:, ::-1].copy()

    def opener(engine, *args):
        session = real(engine, *args)
        return Garbled(session) if engine == "openvino" else session

    monkeypatch.setattr(calibrate, "open_session", opener)
    monkeypatch.setattr(calibrate, "MARGIN", 0.0)  # even a slower runtime would win on speed
    enc = get_encoder()
    enc.encode(PHOTOS[:1])
    assert enc.engine == "onnx"
    assert enc.calibration["min_cosine"]["openvino"] < calibrate.TOLERANCE


def test_without_openvino_calibration_keeps_onnxruntime(record_at, monkeypatch):
    real = runtimes.engine_version
    monkeypatch.setattr(calibrate, "engine_version", lambda e: None if e == "openvino" else real(e))
    enc = get_encoder()
    enc.encode(PHOTOS[:1])
    assert enc.engine == "onnx" and enc.calibration["unavailable"] == {"openvino": "not installed"}


def test_prepare_calibrates_in_a_child_and_opens_nothing(record_at, monkeypatch):
    """A server calls prepare() before it forks: the record is made by another process."""
    import subprocess

    calls = []

    def child(cmd, **kw):
        calls.append(cmd)
        record_at.write_text(json.dumps({"runtime": "onnx", "photos_per_s": {"onnx": 1.0}}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(calibrate.subprocess, "run", child)
    enc = get_encoder()
    enc.prepare()
    assert enc._session is None and len(calls) == 1 and calls[0][1:3] == ["-m", "lookalike.encoders.calibrate"]
    assert json.loads(calls[0][3])["model"] == enc.name
    enc.prepare()
    assert len(calls) == 1  # on record: no second child
    enc.encode(PHOTOS[:1])
    assert enc.engine == "onnx"


def test_calibration_child_runs_for_real(tmp_path):
    """The module the server starts: it measures and prints the record it kept."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LOOKALIKE_CALIBRATION_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "lookalike.encoders.calibrate", json.dumps({"precision": "fp32"})],
                         capture_output=True, text=True, env=env, check=True, timeout=300)
    record = json.loads(out.stdout)
    assert record["runtime"] in runtimes.ENGINES and record["export"].endswith(".onnx")
    assert list(tmp_path.glob("*.json"))


def test_runtime_choices_are_checked():
    with pytest.raises(ModelError, match="auto, onnx, openvino, torch"):
        get_encoder(runtime="tensorrt")
    with pytest.raises(ModelError, match="unknown runtime"):
        runtimes.open_session("tensorrt", PHOTOS[0], 1, (0, 0, 0), (1, 1, 1))


def test_a_calibration_that_fails_falls_back_to_onnxruntime(record_at, monkeypatch, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="lookalike")  # a CLI test earlier may have quietened it

    def broken(enc):
        raise RuntimeError("no demo photos")

    monkeypatch.setattr(calibrate, "measure", broken)
    enc = get_encoder()
    assert enc.encode(PHOTOS[:1]).shape == (1, enc.dim)
    assert enc.engine == "onnx" and "no demo photos" in enc.calibration["error"]
    assert not record_at.exists()  # nothing kept: the next process tries again
    assert "using ONNX Runtime" in caplog.text


def test_a_read_only_cache_still_calibrates(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    monkeypatch.setenv("LOOKALIKE_CALIBRATION_DIR", str(folder / "sub"))
    import os

    if os.access(folder, os.W_OK):  # root ignores the mode: make the folder a file instead
        folder.chmod(0o700)
        folder.rmdir()
        folder.write_text("not a folder")
    enc = get_encoder()
    assert enc.encode(PHOTOS[:1]).shape == (1, enc.dim)
    assert enc.engine in runtimes.ENGINES and enc.calibration["photos_per_s"]


def test_a_runtime_that_cannot_load_the_export_leaves_it_in_place(monkeypatch):
    """OpenVINO failing (say, too old a release) is one clear error; the export stays for ONNX Runtime."""
    import lookalike.encoders.cnn as cnn

    def refuse(engine, *args):
        raise RuntimeError(f"{engine} says no")

    enc = get_encoder(runtime="openvino")
    path = enc.export()
    monkeypatch.setattr(cnn, "open_session", refuse)
    with pytest.raises(ModelError, match="openvino could not load .*openvino says no.*--runtime onnx"):
        enc.encode(PHOTOS[:1])
    assert path.is_file()


@pytest.mark.parametrize("runtime", ["onnx", "auto"])
def test_a_damaged_export_is_removed_and_made_again(tmp_path, monkeypatch, runtime):
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "cache"))
    enc = get_encoder(size=64, precision="fp32", runtime=runtime)  # tiny input: a quick export
    path = enc.export()
    path.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="unusable and was removed"):
        enc.encode(PHOTOS[:1])
    assert not path.exists()
    again = get_encoder(size=64, precision="fp32", runtime=runtime)
    assert again.encode(PHOTOS[:1]).shape == (1, again.dim) and path.is_file()
