"""Which runtime runs the model fastest on this machine: measured once, kept, and checked.

ONNX Runtime's and OpenVINO's speeds differ by CPU, int8 kernels above all (AVX-512 VNNI,
AVX2 alone, AMX). The first time an encoder with ``runtime="auto"`` opens on a machine, every
installed runtime runs the same bundled demo photos through the same cached export, the
runtimes taking turns for several rounds. The fastest one whose vectors agree with ONNX
Runtime's (pooled vectors with cosine >= ``TOLERANCE`` on every photo) is kept in
``<cache>/calibration/<key>.json`` (or ``$LOOKALIKE_CALIBRATION_DIR``), keyed by the export, the thread count, the CPU (model and
flags) and the runtimes' versions, so a changed machine or upgrade measures again. Another
runtime must beat ONNX Runtime, the reference, by ``MARGIN`` to be chosen. The choice and its
figures go into the index manifest (``model.runtime``, ``model.calibration``).

    python -m lookalike.encoders.calibrate '{"model": "efficientnet-lite0"}'   # what serve runs
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lookalike.config import cache_dir
from lookalike.encoders.base import pool
from lookalike.encoders.runtimes import ENGINES, engine_version, open_session
from lookalike.errors import LookalikeError

logger = logging.getLogger(__name__)

__all__ = ["TOLERANCE", "MARGIN", "choose_runtime", "calibrate", "calibrate_in_child", "calibration_path",
           "is_calibrated",
           "cpu_signature", "measure"]

#: a runtime's pooled vectors must have at least this cosine with ONNX Runtime's on every
#: calibration photo (measured: OpenVINO fp32 1.0000, int8 >= 0.998; int8 vs fp32 is ~0.90)
TOLERANCE = 0.99
#: another runtime is chosen only when it is at least this much faster than ONNX Runtime
MARGIN = 1.05
PHOTOS = 16
ROUNDS = 5


def cpu_signature() -> dict[str, str]:
    """The CPU as kernels see it: model name and the flags (hashed: they pick the kernels)."""
    model, flags = "unknown", ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.strip()
    # /proc/cpuinfo names the CPU; the features this process gets from CPUID, which pick the
    # kernels, can be fewer (masked by a hypervisor, or by benchmarks/isa.py): NumPy's runtime
    # detection asks CPUID itself.
    features = getattr(np._core._multiarray_umath, "__cpu_features__", {})  # type: ignore[attr-defined]  # private
    seen = sorted(k for k, v in features.items() if v)
    signature = " ".join(sorted(flags.split())) + " | " + " ".join(seen)
    return {"model": model, "flags": hashlib.sha1(signature.encode()).hexdigest()[:12],
            "cores": str(os.cpu_count() or 1)}


def _threads(enc: Any) -> int:
    return enc.threads or os.cpu_count() or 1


def calibration_path(enc: Any) -> Path:
    """Where this machine's choice for ``enc`` (its export and thread count) is kept."""
    parts = [enc.onnx_path().name, str(_threads(enc)), json.dumps(cpu_signature(), sort_keys=True),
             *(f"{e}={engine_version(e)}" for e in ENGINES)]
    key = hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]
    folder = os.environ.get("LOOKALIKE_CALIBRATION_DIR")
    return (Path(folder) if folder else cache_dir() / "calibration") / f"{enc.name}-{key}.json"


def is_calibrated(enc: Any) -> bool:
    """Whether this machine's choice for ``enc`` is on record (nothing to measure first)."""
    return _read(calibration_path(enc)) is not None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("runtime") in ENGINES else None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One calibration at a time per key, across processes (server workers, Ray actors)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def choose_runtime(enc: Any) -> dict[str, Any]:
    """The runtime for ``enc`` on this machine: the record kept, or measured now and kept.

    Never fails for want of a record: a cache folder that can't be written means measuring for
    this process alone, and a calibration that fails means ONNX Runtime (the reference)."""
    path = calibration_path(enc)
    record = _read(path)
    if record is not None:
        return record
    try:
        with _locked(path):
            record = _read(path)  # another process may have measured while we waited
            if record is None:
                record = _measured_or_reference(enc)
                if "error" not in record:  # a failed calibration is not kept: the next process tries again
                    tmp = path.with_suffix(f".{os.getpid()}.tmp")
                    tmp.write_text(json.dumps(record, indent=2) + "\n")
                    tmp.replace(path)
                    logger.info("runtime calibration for %s: %s (photos/s %s)", enc.name, record["runtime"],
                                record["photos_per_s"])
    except OSError as exc:
        logger.warning("can't keep the runtime calibration in %s (%s); measuring for this process", path.parent, exc)
        record = record or _measured_or_reference(enc)
    return record


def calibrate(enc: Any, *, again: bool = False) -> dict[str, Any]:
    """This machine's record for ``enc`` (``lookalike calibrate``): exported first if needed;
    ``again`` forgets the kept record and measures anew (after an upgrade, or if the machine
    was busy the first time)."""
    enc.export()
    if again:
        calibration_path(enc).unlink(missing_ok=True)
    return choose_runtime(enc)


def _measured_or_reference(enc: Any) -> dict[str, Any]:
    """:func:`measure`, or where it fails, ONNX Runtime (the reference) with the reason."""
    try:
        return measure(enc)
    except Exception as exc:  # noqa: BLE001
        logger.warning("runtime calibration failed (%s: %s); using ONNX Runtime", type(exc).__name__, exc)
        return {"runtime": "onnx", "photos_per_s": {}, "error": f"{type(exc).__name__}: {exc}"[:200]}


def measure(enc: Any) -> dict[str, Any]:
    """Time every installed runtime on the demo photos, taking turns, and pick one."""
    from lookalike.demo import demo_catalog
    from lookalike.reading.images import model_input

    path = enc.onnx_path()  # exported by the caller
    threads = _threads(enc)
    photos = sorted((demo_catalog().parent / "images").glob("*.jpg"))[:PHOTOS]
    pixels = np.stack([model_input(p, enc.preprocess) for p in photos])
    sessions, failed = {}, {}
    for engine in ENGINES:
        if engine_version(engine) is None:
            failed[engine] = "not installed"
            continue
        try:
            sessions[engine] = open_session(engine, path, threads, enc.spec.mean, enc.spec.std)
        except Exception as exc:  # noqa: BLE001 - a runtime that can't load this model is skipped
            failed[engine] = f"{type(exc).__name__}: {exc}"[:200]
    if "onnx" not in sessions:
        raise LookalikeError(f"ONNX Runtime could not load {path.name}: {failed.get('onnx')}")
    vectors = {e: pool(s.run(pixels), enc.pooling) for e, s in sessions.items()}  # also the warm-up
    seconds: dict[str, list[float]] = {e: [] for e in sessions}
    for _ in range(ROUNDS if len(sessions) > 1 else 0):
        for engine, session in sessions.items():
            t = time.perf_counter()
            session.run(pixels)
            seconds[engine].append(time.perf_counter() - t)
    ref = vectors["onnx"] / np.linalg.norm(vectors["onnx"], axis=1, keepdims=True)
    cosine = {e: float(np.min(np.sum(ref * v / np.linalg.norm(v, axis=1, keepdims=True), axis=1)))
              for e, v in vectors.items()}
    rate = {e: round(len(pixels) / statistics.median(s), 1) for e, s in seconds.items() if s}
    best = "onnx"
    for engine in sessions:
        if cosine[engine] >= TOLERANCE and rate.get(engine, 0) >= MARGIN * rate.get(best, float("inf")):
            best = engine
    return {
        "runtime": best,
        "photos_per_s": rate,
        "min_cosine": {e: round(c, 5) for e, c in cosine.items()},
        "tolerance": TOLERANCE,
        "margin": MARGIN,
        "photos": len(pixels),
        "rounds": ROUNDS if len(sessions) > 1 else 0,
        "threads": threads,
        "export": path.name,
        "cpu": cpu_signature(),
        "versions": {e: engine_version(e) for e in ENGINES},
        "unavailable": failed,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def calibrate_in_child(enc: Any) -> dict[str, Any] | None:
    """Make sure the record exists, measuring in a child process if not, so the caller (a server
    about to fork its workers) never loads a runtime itself. Returns the record, or ``None``
    when the child failed (each worker then calibrates on first use)."""
    from lookalike.encoders import EncoderSettings

    path = calibration_path(enc)
    record = _read(path)
    if record is not None:
        return record
    settings = EncoderSettings.of(enc).__dict__ | {"threads": enc.threads}
    proc = subprocess.run([sys.executable, "-m", "lookalike.encoders.calibrate", json.dumps(settings)],
                          capture_output=True, text=True, check=False)
    record = _read(path)
    if record is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        logger.warning("runtime calibration failed (%s); workers will calibrate on first use", tail[0])
    return record


def main(argv: list[str] | None = None) -> int:
    from lookalike.encoders import EncoderSettings

    argv = sys.argv[1:] if argv is None else argv
    args = json.loads(argv[0]) if argv else {}
    threads = args.pop("threads", None)
    enc = EncoderSettings(**{**args, "runtime": "auto"}).make(threads=threads)
    print(json.dumps(calibrate(enc), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
