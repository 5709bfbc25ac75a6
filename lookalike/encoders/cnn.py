"""CNN encoders: exported once to ONNX (cached) and run on ONNX Runtime or OpenVINO, or eager PyTorch."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lookalike.config import DEFAULT_POOLING, DEFAULT_RESIZE, DEFAULT_TRIM, cache_dir, progress_enabled
from lookalike.encoders.base import POOLINGS, l2_normalize, pool, pooled_dim
from lookalike.encoders.runtimes import Session, normalise, open_session
from lookalike.errors import MissingDependencyError, ModelError
from lookalike.folder.rows import file_sha1
from lookalike.reading.images import ImageSource, Preprocess, model_input

logger = logging.getLogger(__name__)

__all__ = ["ModelSpec", "CNNEncoder", "RUNTIMES", "PRECISIONS"]

#: "auto": ONNX Runtime or OpenVINO, whichever a one-time calibration on this machine measured
#: faster with vectors within tolerance (:mod:`.calibrate`); "onnx" and "openvino" force one;
#: "torch": eager PyTorch (fp32, slow; the reference for the export)
RUNTIMES = ("auto", "onnx", "openvino", "torch")
#: int8: the ONNX export quantized once (static, per-channel, 7-bit weights so no CPU's
#: int8 path saturates), calibrated on the bundled demo photos; about 2x faster than fp32
#: on 2 cores with the same P@5 for efficientnet-lite0 (docs/quality.md). fp32: the plain
#: export; the torch runtime is fp32 only.
PRECISIONS = ("int8", "fp32")
#: about how long the first run on a machine prepares the default model (ONNX export, int8
#: quantization and the runtime measurement): 11 to 24 s measured on a shared 2-core machine
PREPARE_SECONDS = 20
#: how many bundled demo photos calibrate the int8 activation ranges
CALIBRATION_PHOTOS = 64
#: bump when the exported graph changes, so stale cached exports are never used
EXPORT_REVISION = 2
#: accepted input sides: below 64 the maps vanish, above 1024 a batch no longer fits memory
MIN_SIZE, MAX_SIZE = 64, 1024


@dataclass(frozen=True)
class ModelSpec:
    """What makes a backbone: its map size, its input normalisation and where weights are."""

    name: str
    channels: int
    input_size: int  # default side of the square input, in pixels
    stride: int  # input pixels per feature-map cell; sizes must be multiples of it
    mean: tuple[float, float, float]  # in 0..255 pixel units
    std: tuple[float, float, float]
    builder: str  # function name in lookalike.encoders.models
    find_weights: Callable[[], Path | None]
    weights_url: str | None = None
    weights_env: str | None = None
    precision: str = "fp32"  # default arithmetic with ONNX Runtime (see PRECISIONS)


_FILE_SHA1S: dict[tuple[str, int, int], str] = {}


def model_file_sha1(path: Path) -> str:
    """The SHA-1 of a model file's content (weights: hundreds of MB), hashed once per file, size
    and mtime a process."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_SHA1S:
        _FILE_SHA1S[memo] = file_sha1(path)
    return _FILE_SHA1S[memo]


def _weights_key(path: Path) -> str:
    """A short key of the weights file's content, the same on every machine that has these weights
    (a key of size and mtime changed with each install)."""
    return model_file_sha1(path)[:12]


class CNNEncoder:
    """An ImageNet CNN whose last feature map is pooled into one vector per photo.

    The PyTorch model is exported once to ``<cache>/onnx/``; later runs load that file
    without importing torch, in ONNX Runtime or OpenVINO (``runtime``).
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        pooling: str = DEFAULT_POOLING,
        weights: str | os.PathLike | None = None,
        runtime: str = "auto",
        resize: str = DEFAULT_RESIZE,
        trim: bool = DEFAULT_TRIM,
        size: int | None = None,
        precision: str | None = None,
        threads: int | None = None,
        streams: int = 1,
    ) -> None:
        size = spec.input_size if size is None else int(size)
        if precision is None:
            precision = "fp32" if runtime == "torch" else spec.precision
        if precision not in PRECISIONS:
            raise ModelError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if runtime == "torch" and precision != "fp32":
            raise ModelError("the torch runtime runs fp32 only; int8 needs runtime auto, onnx or openvino")
        if not MIN_SIZE <= size <= MAX_SIZE or size % spec.stride:
            raise ModelError(f"input size must be a multiple of {spec.stride} from {MIN_SIZE} to {MAX_SIZE} "
                             f"pixels, not {size}")
        if pooling not in POOLINGS:
            raise ModelError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        if runtime not in RUNTIMES:
            raise ModelError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        self.spec = spec
        self.name = spec.name
        self.pooling = pooling
        self.runtime = runtime
        self.precision = precision
        self.threads = threads
        #: how many threads may call encode_pixels at once, each on its share of ``threads``
        #: (a build's decode-and-embed workers); 1 gives one call all of them
        self.streams = max(1, int(streams))
        self.preprocess = Preprocess(size=size, resize=resize, trim=bool(trim))
        self.grid = size // spec.stride  # side of the last feature map
        self.dim = pooled_dim(spec.channels, self.grid, pooling)
        self.weights_path = self._resolve_weights(weights)
        self._session: Session | None = None
        #: how the runtime was chosen (calibration figures) once ``runtime="auto"`` resolved
        self.calibration: dict[str, Any] | None = None
        self._torch_model: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"CNNEncoder({self.name!r}, pooling={self.pooling!r}, dim={self.dim}, size={self.preprocess.size}, "
                f"trim={self.preprocess.trim}, "
                f"runtime={self.runtime!r}, precision={self.precision!r})")

    @property
    def engine(self) -> str:
        """The runtime that runs (or will run) the model: ``runtime``, or for ``"auto"`` the
        calibrated choice once a session is open or :meth:`resolve_runtime` has chosen it
        (``"auto"`` before)."""
        if self._session is not None:
            return self._session.engine
        return self.calibration["runtime"] if self.calibration else self.runtime

    def resolve_runtime(self) -> str:
        """The concrete runtime this encoder runs on (``onnx``, ``openvino`` or ``torch``), chosen
        now without opening a session: ``runtime``, or for ``"auto"`` this machine's calibrated
        choice (exported and measured first, once, if not on record), kept in :attr:`calibration`.

        Work spread over other processes pins this choice in the settings it ships them
        (:meth:`~lookalike.encoders.EncoderSettings.pinned`): each process calibrating for
        itself, at its own thread count or on its own CPU, may choose the other runtime, whose
        vectors differ from these (cosine >= the calibration's tolerance, not equal)."""
        if self._session is not None:
            return self._session.engine
        if self.runtime != "auto":
            return self.runtime
        with self._lock:
            self._ensure_export()
            return self._chosen_runtime()

    def _chosen_runtime(self) -> str:
        """``runtime``, or for ``"auto"`` the calibrated choice (the export exists; the caller
        holds the lock). Chosen once per encoder: its session and :meth:`resolve_runtime` agree."""
        if self.runtime != "auto":
            return self.runtime
        if self.calibration is None:
            from lookalike.encoders.calibrate import choose_runtime

            self.calibration = choose_runtime(self)
        return str(self.calibration["runtime"])

    # -- weights ---------------------------------------------------------------------
    def _resolve_weights(self, weights: str | os.PathLike | None) -> Path:
        if weights is None and self.spec.weights_env:
            weights = os.environ.get(self.spec.weights_env) or None
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise ModelError(f"weights file not found: {path}")
            return path
        found = self.spec.find_weights()
        if found is not None:
            return found
        if self.spec.weights_url:
            return self._download(self.spec.weights_url)
        raise ModelError(f"no weights for {self.name}: pass weights=PATH")

    def _download(self, url: str) -> Path:
        target = cache_dir() / "weights" / url.rsplit("/", 1)[-1]
        if target.is_file():
            return target
        hint = f"download {url} elsewhere and pass --weights PATH"
        if self.spec.weights_env:
            hint += f" (or set {self.spec.weights_env})"
        try:
            import urllib.request

            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".part")
            logger.info("downloading %s weights from %s", self.name, url)
            with urllib.request.urlopen(url, timeout=30) as resp, open(tmp, "wb") as f:  # noqa: S310
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
            tmp.replace(target)
        except OSError as exc:
            raise ModelError(f"can't download {self.name} weights ({exc}); {hint}") from None
        return target

    @property
    def weights_id(self) -> str:
        """Names the weights in manifests: file name plus a short key of the file's content."""
        return f"{self.weights_path.name}#{_weights_key(self.weights_path)}"

    # -- runtimes --------------------------------------------------------------------
    def _torch_module(self) -> Any:
        if self._torch_model is None:
            try:
                from lookalike.encoders import models
            except ImportError as exc:  # pragma: no cover - torch is a core dependency
                raise MissingDependencyError("PyTorch is needed: pip install torch==2.13.0") from exc
            import torch

            torch.set_num_threads(self.threads or os.cpu_count() or 1)
            # some model packages print banners; library code keeps stdout clean
            with contextlib.redirect_stdout(io.StringIO()):
                self._torch_model = getattr(models, self.spec.builder)(self.weights_path)
        return self._torch_model

    def onnx_path(self) -> Path:
        """Where this encoder's export is cached: one file per weights, size and precision."""
        return self._onnx_path(self.precision)

    def _onnx_path(self, precision: str) -> Path:
        key = _weights_key(self.weights_path)
        tag = "" if precision == "fp32" else f"-{precision}"
        return cache_dir() / "onnx" / f"{self.name}-{key}-{self.preprocess.size}{tag}-r{EXPORT_REVISION}.onnx"

    def _export(self, path: Path) -> None:
        import torch

        module = self._torch_module()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        dummy = torch.zeros(1, 3, self.preprocess.size, self.preprocess.size)
        logger.info("exporting %s to ONNX (once): %s", self.name, path)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (dummy,),
                str(tmp),
                input_names=["pixels"],
                output_names=["features"],
                dynamic_axes={"pixels": {0: "n"}, "features": {0: "n"}},
                opset_version=17,
                dynamo=False,
            )
        tmp.replace(path)

    def _export_int8(self, path: Path) -> None:
        """Quantize the fp32 export (made first if needed) to int8, calibrated on demo photos."""
        try:
            from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
            from onnxruntime.quantization.shape_inference import quant_pre_process
        except ImportError as exc:
            raise MissingDependencyError(
                f"int8 needs onnxruntime's quantization tools ({exc}); pip install onnx, or use precision fp32"
            ) from exc

        from lookalike.demo import demo_catalog

        fp32 = self._onnx_path("fp32")
        if not fp32.is_file():
            self._export(fp32)
        photos = sorted((demo_catalog().parent / "images").glob("*.jpg"))[:CALIBRATION_PHOTOS]
        pixels = np.stack([model_input(p, self.preprocess) for p in photos])
        batches = [normalise(pixels[i : i + 8], self.spec.mean, self.spec.std) for i in range(0, len(pixels), 8)]

        class _Photos(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(batches)

            def get_next(self) -> dict | None:
                return next(({"pixels": b} for b in self._it), None)

        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        prepared = path.with_suffix(f".{os.getpid()}.pre")
        logger.info("quantizing %s to int8 (once, %d calibration photos): %s", self.name, len(pixels), path)
        try:
            # fold batch norms into convolutions first: quantizing them apart makes int8 slower
            quant_pre_process(str(fp32), str(prepared))
            quantize_static(str(prepared), str(tmp), _Photos(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            per_channel=True, reduce_range=True)
            tmp.replace(path)
        except Exception as exc:  # noqa: BLE001 - any quantizer failure is one clear error
            raise ModelError(f"could not quantize {self.name} to int8 ({type(exc).__name__}: {exc}); "
                             "use precision fp32 (--precision fp32)") from exc
        finally:
            prepared.unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)

    def prepare(self) -> Path | None:
        """Make sure the cached ONNX export exists, exporting (and quantizing) now rather than
        on the first query, and for ``runtime="auto"`` that this machine's calibration is on
        record (measured in a child process); returns the export's path, ``None`` for the
        torch runtime. No session is opened here, so a server can call this before it forks."""
        if self.runtime == "torch":
            return None
        path = self.export()
        if self.runtime == "auto":
            from lookalike.encoders.calibrate import calibrate_in_child

            calibrate_in_child(self)
        return path

    def is_prepared(self) -> bool:
        """Whether the model loads in about a second: its cached export is there and, for
        ``runtime="auto"``, this machine's calibration is on record. When not, :meth:`prepare`
        (or the first encode) exports, quantizes and measures it first, once (about
        :data:`PREPARE_SECONDS`)."""
        if self.runtime == "torch" or self._session is not None:
            return True
        if not self.onnx_path().is_file():
            return False
        if self.runtime != "auto":
            return True
        from lookalike.encoders.calibrate import is_calibrated

        return is_calibrated(self)

    def export(self) -> Path:
        """The cached ONNX export for these settings, made now (once) if it is not there yet."""
        with self._lock:
            return self._ensure_export()

    def _ensure_export(self) -> Path:
        path = self.onnx_path()
        if not path.is_file():
            self._export_int8(path) if self.precision == "int8" else self._export(path)
        return path

    def _onnx_session(self) -> Session:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    path = self._ensure_export()
                    engine = self._chosen_runtime()
                    try:
                        self._session = open_session(engine, path, self.threads, self.spec.mean, self.spec.std,
                                                     self.streams)
                    except MissingDependencyError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - a damaged cache file, or a runtime too old
                        if engine != "onnx":  # the reference decides whether the file is to blame
                            raise ModelError(f"{engine} could not load {path.name} ({type(exc).__name__}: "
                                             f"{exc}); use --runtime onnx") from exc
                        path.unlink(missing_ok=True)
                        raise ModelError(f"cached ONNX model was unusable and was removed: {exc}") from exc
        return self._session

    def load(self) -> None:
        """Load the model now rather than on the first encode (a build does it while its
        workers decode their first photos)."""
        if self.runtime == "torch":
            self._torch_module()
        else:
            self._onnx_session()

    def _feature_map(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``(n, size, size, 3)`` photos -> the last feature map ``(n, channels, g, g)``."""
        if self.runtime != "torch":
            return self._onnx_session().run(pixels)
        import torch

        module = self._torch_module()
        with torch.no_grad():
            return module(torch.from_numpy(normalise(pixels, self.spec.mean, self.spec.std))).numpy()

    # -- encoding --------------------------------------------------------------------
    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Encode uint8 ``(n, size, size, 3)`` prepared photos into float32 ``(n, dim)``."""
        if pixels.ndim == 3:
            pixels = pixels[None]
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return pool(self._feature_map(pixels), self.pooling)

    def encode(
        self,
        images: ImageSource | Sequence[ImageSource],
        *,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        normalize_embeddings: bool = False,
    ) -> np.ndarray:
        """Encode photos (paths, bytes or PIL images) into float32 ``(n, dim)`` vectors.

        Raises :class:`~lookalike.errors.ImageError` for a photo that can't be read; the
        catalogue builder uses per-row decoding instead and never raises for one photo.
        """
        single = isinstance(images, (str, os.PathLike, bytes, bytearray)) or hasattr(images, "mode")
        items: Sequence[ImageSource] = [images] if single else images  # type: ignore[list-item,assignment]  # narrowed by `single`
        out = []
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(items), unit="img", disable=not progress_enabled(show_progress_bar),
            desc=f"encode {self.name}",
        )
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            pixels = np.stack([model_input(s, self.preprocess) for s in chunk])
            out.append(self.encode_pixels(pixels))
            bar.update(len(chunk))
        bar.close()
        vecs = np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(vecs) if normalize_embeddings else vecs
