"""What a benchmark ran on: CPU model and the flags that pick kernels, BLAS, ONNX Runtime.

Every benchmark prints this first (``print_machine()``) and stores it with its results
(``describe()``), so each figure says on what it was measured.
"""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

import isa  # benchmarks/ is the script's folder

#: the CPU features that decide which kernels NumPy/OpenBLAS, ONNX Runtime (MLAS) and FAISS run
KERNEL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def describe() -> dict[str, Any]:
    cpu = _lscpu()
    flags = set(cpu.get("Flags", "").split())
    emulated = isa.active()
    if emulated:  # /proc/cpuinfo shows the real CPU; the process sees the masked one
        flags = {f for f in flags if not f.startswith(isa.HIDDEN_FLAGS[emulated])}
    info: dict[str, Any] = {
        "cpu": cpu.get("Model name", platform.processor() or "unknown"),
        "cores": os.cpu_count(),
        "isa": f"emulated {emulated}-only: {isa.HIDDEN[emulated]} hidden (benchmarks/isa.py)" if emulated else "native",
        "kernel_flags": [f for f in KERNEL_FLAGS if f in flags],
        "python": platform.python_version(),
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
                                           "OPENBLAS_NUM_THREADS", "NPY_DISABLE_CPU_FEATURES") if k in os.environ},
    }
    try:
        import numpy as np
        from threadpoolctl import threadpool_info

        info["numpy"] = np.__version__
        info["blas"] = [f"{p.get('internal_api')} {p.get('version')} {p.get('architecture', '')} "
                        f"threads={p.get('num_threads')}" for p in threadpool_info() if p.get("user_api") == "blas"]
        simd = getattr(np._core._multiarray_umath, "__cpu_features__", {})  # type: ignore[attr-defined]
        info["numpy_simd"] = [k for k in ("AVX2", "AVX512F", "AVX512_SKX", "AVX512_ICL", "AVX512_SPR") if simd.get(k)]
    except Exception:  # noqa: BLE001 - a description must never fail a benchmark
        pass
    try:
        import onnxruntime as ort

        info["onnxruntime"] = f"{ort.__version__} {ort.get_device()} providers={ort.get_available_providers()}"
    except Exception:  # noqa: BLE001
        pass
    try:
        import openvino as ov

        info["openvino"] = (f"{ov.__version__} "
                            f"capabilities={ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')}")
    except Exception:  # noqa: BLE001 - the extra may be missing
        pass
    return info


def print_machine() -> dict[str, Any]:
    """Print and return what this benchmark runs on; first re-run it under ``$LOOKALIKE_BENCH_ISA``."""
    isa.reexec_if_requested()
    info = describe()
    print(f"machine: {info['cpu']}, {info['cores']} cores; kernel flags: {' '.join(info['kernel_flags'])}")
    if info["isa"] != "native":
        print(f"  isa: {info['isa']}")
    for key in ("numpy", "numpy_simd", "blas", "onnxruntime", "openvino", "env"):
        if info.get(key):
            print(f"  {key}: {info[key]}")
    return info


if __name__ == "__main__":
    print_machine()
