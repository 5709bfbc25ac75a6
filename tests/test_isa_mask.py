"""benchmarks/isa.py: a process under the CPUID mask sees an AVX2-only CPU, and only that changes.

The AVX2 figures in docs/benchmarks.md rest on this mask, so the tests check what the
libraries themselves detect, and that real crashes still crash (the mask owns SIGSEGV).
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _isa():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("isa", ROOT / "benchmarks" / "isa.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


isa = _isa()
pytestmark = pytest.mark.skipif(isa.unsupported() is not None, reason=f"CPUID mask: {isa.unsupported()}")

PROBE = """
import json, threading
seen = {}
def probe():  # imported in a thread: faulting must be inherited by threads
    import numpy as np
    from threadpoolctl import threadpool_info
    f = np._core._multiarray_umath.__cpu_features__
    seen.update(AVX2=f["AVX2"], AVX512F=f["AVX512F"], AVX512VNNI=f.get("AVX512VNNI", False),
                blas=[p.get("architecture") for p in threadpool_info() if p.get("user_api") == "blas"])
t = threading.Thread(target=probe); t.start(); t.join()
import onnxruntime  # MLAS probes CPUID at load; it must get answers, not a crash
import openvino as ov
seen["openvino"] = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
print(json.dumps(seen))
"""


def _probe(env: dict[str, str] | None) -> dict:  # type: ignore[type-arg]
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_masked_process_sees_avx2_but_no_avx512_in_numpy_openblas_and_openvino(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path))
    native, masked = _probe(None), _probe(isa.env_for("avx2"))
    assert masked["AVX2"] is True
    assert masked["AVX512F"] is False and masked["AVX512VNNI"] is False
    assert "BF16" not in masked["openvino"] and "INT8" in masked["openvino"]
    assert all("SkylakeX" not in b and "Cooperlake" not in b and "Sapphire" not in b for b in masked["blas"])
    if native["AVX512F"]:  # on an AVX-512 host the mask must have changed something
        assert masked["blas"] != native["blas"] or native["blas"] == []


def test_a_real_crash_still_kills_the_process_with_sigsegv(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path))
    env = isa.env_for("avx2")
    crash = "import ctypes; ctypes.string_at(0)"
    out = subprocess.run([sys.executable, "-c", crash], env=env, capture_output=True, timeout=60)
    assert out.returncode == -signal.SIGSEGV
    # a handler the program installs (Python's faulthandler) still gets the real faults
    out = subprocess.run([sys.executable, "-X", "faulthandler", "-c", crash], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == -signal.SIGSEGV
    assert "Segmentation fault" in out.stderr


def test_a_benchmark_reexecutes_itself_under_the_mask_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("LOOKALIKE_BENCH_ISA", "avx2")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "machine.py")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "isa: emulated avx2-only" in out.stdout
    assert "avx512" not in out.stdout.split("\n")[0]
    assert "numpy_simd: ['AVX2']" in out.stdout
