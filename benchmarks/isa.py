"""Run a benchmark as if this CPU were AVX2-only: no AVX-512, AVX-VNNI or AMX.

Speed figures depend on which kernels the libraries pick, and they pick them from the CPUID
instruction: NumPy and OpenBLAS, ONNX Runtime's MLAS, oneDNN inside PyTorch and OpenVINO.
On a CPU with AVX-512 VNNI, int8 inference is twice as fast as on an AVX2-only one, so a
figure measured here does not hold on, say, an AMD EPYC with AVX2 only.

``isa/cpuid_mask.c`` (loaded with ``LD_PRELOAD``) makes CPUID fault in the process and answers
it with those feature bits cleared; glibc's own string functions are told the same through
``GLIBC_TUNABLES``. The clocks, caches and memory stay this machine's: it emulates the
instruction set another CPU offers, not that CPU's speed. It needs a C compiler and a CPU and
kernel with CPUID faulting (``cpuid_fault`` in ``/proc/cpuinfo``).

Two ways in:

    LOOKALIKE_BENCH_ISA=avx2 python benchmarks/bench_build.py ...   # any benchmark script
    python benchmarks/isa.py avx2 lookalike build ...               # any command

A benchmark's ``print_machine()`` re-executes it under the mask when ``LOOKALIKE_BENCH_ISA``
asks for one, and then reports the features its process sees.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "isa" / "cpuid_mask.c"
#: what each emulated ISA hides: documentation for reports (the bits are in cpuid_mask.c)
HIDDEN = {"avx2": "AVX-512 (all), AVX-VNNI, AVX512-BF16/FP16, AMX, GFNI, VAES, VPCLMULQDQ"}
#: /proc/cpuinfo flags (as lscpu prints them) of what each emulated ISA hides
HIDDEN_FLAGS = {"avx2": ("avx512", "avx_vnni", "amx", "gfni", "vaes", "vpclmul")}
GLIBC_HWCAPS = {"avx2": "glibc.cpu.hwcaps=" + ",".join(
    f"-{f}" for f in ("AVX512F", "AVX512CD", "AVX512BW", "AVX512DQ", "AVX512VL", "AVX512ER", "AVX512PF",
                      "AVX512_VNNI", "AVX_VNNI", "AVX512_BF16", "AVX512_FP16"))}
ENV = "LOOKALIKE_BENCH_ISA"


def unsupported() -> str | None:
    """Why the mask can't run here, or None."""
    if not sys.platform.startswith("linux") or os.uname().machine != "x86_64":
        return "needs Linux on x86-64"
    try:
        if "cpuid_fault" not in Path("/proc/cpuinfo").read_text():
            return "this CPU or hypervisor offers no CPUID faulting (cpuid_fault)"
    except OSError:
        return "can't read /proc/cpuinfo"
    if not (shutil.which("cc") or shutil.which("gcc")):
        return "needs a C compiler (cc)"
    return None


def shim() -> Path:
    """The compiled mask, built once per source version into the cache folder."""
    digest = hashlib.sha1(SOURCE.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("LOOKALIKE_CACHE_DIR") or Path.home() / ".cache" / "lookalike")
    out = cache / "isa" / f"cpuid_mask-{digest}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        cc = shutil.which("cc") or "gcc"
        subprocess.run([cc, "-O2", "-Wall", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE), "-ldl"], check=True)
        os.replace(tmp, out)
    return out


def active() -> str | None:
    """The ISA this process is emulating, or None when it runs on the CPU as it is."""
    return os.environ.get(ENV) if "cpuid_mask" in os.environ.get("LD_PRELOAD", "") else None


def env_for(isa: str, base: dict[str, str] | None = None) -> dict[str, str]:
    if isa not in HIDDEN:
        raise SystemExit(f"unknown ISA {isa!r}: choose from {', '.join(HIDDEN)}")
    reason = unsupported()
    if reason:
        raise SystemExit(f"can't emulate {isa} here: {reason}")
    env = dict(os.environ if base is None else base)
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{shim()}:{preload}" if preload else str(shim())
    env["GLIBC_TUNABLES"] = GLIBC_HWCAPS[isa]
    env[ENV] = isa
    return env


@contextlib.contextmanager
def unmasked() -> Iterator[None]:
    """Programs started in this block run on the CPU as it is (the variables env_for sets are
    taken away), this process's own mask staying as it is."""
    saved = {k: os.environ.pop(k) for k in ("LD_PRELOAD", "GLIBC_TUNABLES") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def reexec_if_requested() -> None:
    """Re-execute this Python program under the mask that ``$LOOKALIKE_BENCH_ISA`` names."""
    isa = os.environ.get(ENV, "")
    if isa and isa != "native" and active() != isa:
        os.execve(sys.executable, [sys.executable, *sys.argv], env_for(isa))


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in HIDDEN:
        print(f"usage: python benchmarks/isa.py {{{','.join(HIDDEN)}}} COMMAND [ARG ...]", file=sys.stderr)
        return 2
    env = env_for(argv[0])
    exe = shutil.which(argv[1]) or argv[1]
    os.execve(exe, argv[1:], env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
