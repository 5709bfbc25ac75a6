"""Where an exported model runs: ONNX Runtime or OpenVINO, behind one small interface.

Both open the same cached ONNX export (normalised float ``(n, 3, size, size)`` in) and take
the photos as decoded, uint8 ``(n, size, size, 3)``. ONNX Runtime gets them normalised by
NumPy: folding that into its graph made int8 ~20% slower (the Transpose, Cast, Sub and Mul in
front of its QuantizeLinear run apart). OpenVINO folds them into its first layer itself
(``PrePostProcessor``). ONNX Runtime is the reference; OpenVINO is used where a calibration on
the machine (:mod:`.calibrate`) measured it faster and its vectors agreed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lookalike.config import cache_dir
from lookalike.errors import MissingDependencyError, ModelError

logger = logging.getLogger(__name__)

__all__ = ["ENGINES", "Session", "open_session", "engine_available", "engine_version", "normalise"]

#: the runtimes a cached export can run on; the first is the reference
ENGINES = ("onnx", "openvino")


def normalise(pixels: np.ndarray, mean: Any, std: Any, layout: str = "nchw") -> np.ndarray:
    """uint8 ``(n, h, w, 3)`` -> the float32 ``(n, 3, h, w)`` the exported network takes
    (``layout="nhwc"``: float32 ``(n, h, w, 3)``, for a model of one's own that takes that)."""
    if layout == "nhwc":
        y = pixels.astype(np.float32)
        y -= np.asarray(mean, dtype=np.float32)
        y *= 1.0 / np.asarray(std, dtype=np.float32)
        return y
    # make the channel-first copy on uint8 (4x fewer bytes) before converting
    x = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)).astype(np.float32)
    x -= np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    x *= (1.0 / np.asarray(std, dtype=np.float32)).reshape(1, 3, 1, 1)
    return x


class Session(Protocol):
    """One loaded model: uint8 ``(n, size, size, 3)`` pixels in, the last feature map out."""

    engine: str

    def run(self, pixels: np.ndarray) -> np.ndarray: ...


def engine_available(engine: str) -> bool:
    """Whether ``engine``'s Python package imports here (OpenVINO is the extra ``openvino``)."""
    return engine_version(engine) is not None


#: the distribution and module of each runtime
_PACKAGES = {"onnx": ("onnxruntime", "onnxruntime"), "openvino": ("openvino", "openvino")}


def engine_version(engine: str) -> str | None:
    """The installed version of ``engine``'s package, ``None`` if it is missing; read from the
    package's metadata, without importing it (the runtime not chosen is never imported)."""
    import importlib.metadata
    import importlib.util

    if engine not in _PACKAGES:
        raise ModelError(f"unknown runtime {engine!r}; choose one of {', '.join(ENGINES)}")
    dist, module = _PACKAGES[engine]
    try:
        if importlib.util.find_spec(module) is None:
            return None
        return importlib.metadata.version(dist)
    except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
        return None


class OnnxRuntimeSession:
    """ONNX Runtime on the CPU; ``run`` may be called from several threads at once.

    With ``streams`` callers at once, each run gets ``threads // streams`` intra-op threads; at
    one, it runs on the calling thread, so callers work side by side without a shared pool.
    """

    engine = "onnx"

    def __init__(self, path: Path, threads: int, mean: Any, std: Any, streams: int = 1, *,
                 layout: str = "nchw", output: str | None = None) -> None:
        self._mean, self._std, self._layout = mean, std, layout
        self._outputs = None if output is None else [output]
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingDependencyError("onnxruntime is needed for runtime='onnx': pip install onnxruntime") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads // max(1, streams))
        opts.inter_op_num_threads = 1
        # photo decoding shares the cores: threads that spin while idle slow it
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self._session.run(self._outputs, {self._input: normalise(pixels, self._mean, self._std,
                                                                         self._layout)})[0]


class OpenVinoSession:
    """OpenVINO's CPU plugin, in fp32 arithmetic for fp32 layers (never bf16 behind our back).

    Its compiled blobs are cached under ``<cache>/openvino`` (a later start compiles in ~0.1 s).
    An infer request serves one call at a time, so each thread gets its own. With ``streams``
    callers at once the model gets that many streams (``threads`` shared among them): requests
    on one stream would run one after another.

    The export with its uint8 NHWC input folded in is kept as OpenVINO IR beside the blobs, so a
    later start compiles straight from the blob cache without reading the ONNX file.
    """

    engine = "openvino"

    def __init__(self, path: Path, threads: int, mean: Any, std: Any, streams: int = 1, *,
                 layout: str = "nchw", output: str | None = None) -> None:
        try:
            import openvino as ov
            from openvino.preprocess import PrePostProcessor
        except ImportError as exc:
            raise MissingDependencyError("OpenVINO is needed for runtime='openvino': "
                                         "pip install 'lookalike[openvino]'") from exc
        core = ov.Core()
        blobs = cache_dir() / "openvino"
        blobs.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(blobs)})
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            # bf16 (its default where the CPU has it) moves vectors by more than int8 vs int8
            "INFERENCE_PRECISION_HINT": "f32",
            # decoding threads share these cores: threads pinned to a core would wait on them
            "ENABLE_CPU_PINNING": False,
        }
        config.update({"NUM_STREAMS": streams} if streams > 1 else {"PERFORMANCE_HINT": "LATENCY"})
        stat = path.stat()
        key = hashlib.sha1(repr((path.name, stat.st_size, stat.st_mtime_ns, list(map(float, mean)),
                                 list(map(float, std)), ov.__version__, layout)).encode()).hexdigest()[:16]
        ir = blobs / f"{path.stem}-u8nhwc-{key}.xml"
        self._compiled: Any = None
        if ir.is_file() and ir.with_suffix(".bin").is_file():
            with contextlib.suppress(Exception):  # a damaged IR is made again below
                self._compiled = core.compile_model(str(ir), "CPU", config)
        if self._compiled is None:
            steps = PrePostProcessor(core.read_model(str(path)))
            steps.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
            steps.input().preprocess().convert_element_type(ov.Type.f32).mean(list(map(float, mean))).scale(
                list(map(float, std)))
            steps.input().model().set_layout(ov.Layout(layout.upper()))
            model = steps.build()
            self._compiled = core.compile_model(model, "CPU", config)
            _save_ir(ov, model, ir)
        self._output: Any = 0 if output is None else self._compiled.output(output)
        self._local = threading.local()

    def run(self, pixels: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return np.array(request.infer({0: np.ascontiguousarray(pixels)})[self._output])  # a copy: the request reuses its buffer


def _save_ir(ov: Any, model: Any, ir: Path) -> None:
    """Keep ``model`` as IR at ``ir`` (and its .bin), written aside and moved into place; a
    cache that can't be written only costs the next start its 0.1 s."""
    tmp = ir.with_name(f"{ir.stem}.{os.getpid()}.{threading.get_ident()}.tmp.xml")
    try:
        ov.save_model(model, str(tmp), compress_to_fp16=False)  # fp16 weights would move the vectors
        os.replace(tmp.with_suffix(".bin"), ir.with_suffix(".bin"))
        os.replace(tmp, ir)
    except Exception as exc:  # noqa: BLE001 - OSError, or OpenVINO's own error types
        logger.debug("could not keep OpenVINO IR %s: %s", ir, exc)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)


def open_session(engine: str, path: Path, threads: int | None, mean: Any, std: Any, streams: int = 1, *,
                 layout: str = "nchw", output: str | None = None) -> Session:
    """Load the export at ``path`` on ``engine`` with ``threads`` intra-op threads (None: all
    cores) shared by ``streams`` threads calling ``run`` at once; ``mean`` and ``std`` (per
    channel, pixel units) normalise its uint8 input. ``layout`` is the input the model takes
    (``"nchw"``, or ``"nhwc"``), ``output`` the name of the output returned (None: the first)."""
    n = threads or os.cpu_count() or 1
    opener: Any = {"onnx": OnnxRuntimeSession, "openvino": OpenVinoSession}.get(engine)
    if opener is None:
        raise ModelError(f"unknown runtime {engine!r}; choose one of {', '.join(ENGINES)}")
    return opener(path, n, mean, std, max(1, min(streams, n)), layout=layout, output=output)
