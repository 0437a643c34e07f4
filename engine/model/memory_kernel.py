"""The memory's weight-sized elementwise work, fused: one pass over each state tensor per chunk and layer.

MemoryStep (engine.model.titans) moves every fast-weight and momentum tensor through a handful of elementwise
ops and inner products per chunk; at the peer's sizes those passes over 2 MB tensors, not the matrix products,
are most of its time. PyTorch has no op that fuses them, and torch.compile's CPU backend needs tens of seconds
per shape to build its kernels, so two plain C loops are compiled here with the system C compiler (well under
a second) and called through ctypes. Where no compiler is found, or the tensors are not contiguous float32 or
float64 CPU tensors, MemoryStep runs the same arithmetic as PyTorch ops; `TRM_LAB_MEMORY_KERNEL=torch` forces
that path, and so does PyTorch on more than one thread (see `usable`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

ENV = "TRM_LAB_MEMORY_KERNEL"  # "torch" forces the PyTorch path; anything else (or unset) uses C where it can

# per row b (head b % H of M0):
# forward:  Wo = M0 + a (W - M0) + m S,  So = e S   (written as lerp is: W = M0 stays M0 exactly)
# backward: gW_in = a gW,  gS_in = e gS + m gW,  dots[b] = (<gW, W - M0>, <gS, S>, <gW, S>),
#           g_init[h] += (1 - a_b) gW_b
_SOURCE = r"""
#define STEP(T, SUF)                                                                                          \
void step_forward_##SUF(const T* W, const T* S, const T* M0, const T* a, const T* e, const T* m,              \
                        T* Wo, T* So, long BH, long H, long n) {                                              \
    for (long b = 0; b < BH; b++) {                                                                           \
        const T* w = W + b * n; const T* s = S + b * n; const T* m0 = M0 + (b % H) * n;                      \
        T* wo = Wo + b * n; T* so = So + b * n;                                                               \
        const T ab = a[b], eb = e[b], mb = m[b];                                                                 \
        _Pragma("omp simd")                                                                                   \
        for (long i = 0; i < n; i++) { wo[i] = m0[i] + ab * (w[i] - m0[i]) + mb * s[i]; so[i] = eb * s[i]; } \
    }                                                                                                         \
}                                                                                                             \
void step_backward_##SUF(const T* gW, const T* gS, const T* W, const T* S, const T* M0, const T* a,          \
                         const T* e, const T* m, T* gWi, T* gSi, T* dots, T* g_init, long BH, long H,        \
                         long n) {                                                                            \
    for (long b = 0; b < BH; b++) {                                                                           \
        const T* gw = gW + b * n; const T* gs = gS + b * n; const T* w = W + b * n; const T* s = S + b * n;   \
        const T* m0 = M0 + (b % H) * n; T* gi = g_init + (b % H) * n;                                         \
        T* gwi = gWi + b * n; T* gsi = gSi + b * n;                                                           \
        const T ab = a[b], cb = (T)1 - a[b], eb = e[b], mb = m[b];                                            \
        T da = 0, de = 0, dm = 0;                                                                             \
        _Pragma("omp simd reduction(+:da,de,dm)")                                                             \
        for (long i = 0; i < n; i++) {                                                                        \
            const T g = gw[i], h = gs[i], si = s[i];                                                          \
            gwi[i] = ab * g; gsi[i] = eb * h + mb * g;                                                        \
            da += g * (w[i] - m0[i]); de += h * si; dm += g * si;                                             \
            gi[i] += cb * g;                                                                                  \
        }                                                                                                     \
        dots[3 * b] = da; dots[3 * b + 1] = de; dots[3 * b + 2] = dm;                                         \
    }                                                                                                         \
}
STEP(float, f32)
STEP(double, f64)
"""
_FLAGS = ["-O3", "-fopenmp-simd", "-fPIC", "-shared"]
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "trm-lab" / "kernels"


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled loops, built once per machine and source (cached on disk); None where they cannot be."""
    if os.environ.get(ENV, "").strip().lower() == "torch":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None
    key = hashlib.sha256("\0".join([_SOURCE, compiler, *_FLAGS, platform.machine()]).encode()).hexdigest()[:16]
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / "trm-lab-kernels"):
        target = folder / f"memory_step_{key}.so"
        try:
            if not target.exists():
                folder.mkdir(parents=True, exist_ok=True)
                # build beside the target and rename: processes that start together never load a half-written file
                with tempfile.TemporaryDirectory(dir=folder) as tmp:
                    source, built = Path(tmp) / "memory_step.c", Path(tmp) / "memory_step.so"
                    source.write_text(_SOURCE)
                    subprocess.run([compiler, *_FLAGS, str(source), "-o", str(built)], check=True,
                                   capture_output=True, timeout=120)
                    os.replace(built, target)
            lib = ctypes.CDLL(str(target))
        except (OSError, subprocess.SubprocessError):
            continue
        for suffix in _SUFFIX.values():  # tensors go in as addresses, sizes as C longs
            getattr(lib, f"step_forward_{suffix}").argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_long] * 3
            getattr(lib, f"step_backward_{suffix}").argtypes = [ctypes.c_void_p] * 12 + [ctypes.c_long] * 3
            getattr(lib, f"step_forward_{suffix}").restype = None
            getattr(lib, f"step_backward_{suffix}").restype = None
        return lib
    return None


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the C loops take these tensors: contiguous CPU tensors of one dtype they are built for, with
    PyTorch on one thread (on more, its own elementwise ops, spread over the threads, were faster: the loops run
    on one core while PyTorch's idle workers spin)."""
    if torch.compiler.is_compiling():  # the compiler fuses the PyTorch ops itself and cannot trace a ctypes call
        return False
    first = tensors[0]
    return (first.dtype in _SUFFIX and name() == "c"
            and all(t.device.type == "cpu" and t.dtype == first.dtype and t.is_contiguous() for t in tensors))


def name() -> str:
    """Which path MemoryStep takes for contiguous float CPU tensors at PyTorch's present thread count."""
    return "c" if torch.get_num_threads() == 1 and library() is not None else "torch"


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def step_forward(weights, momentum, initial, a, e, m):
    """(Wo, So) with Wo = a W + (1 - a) M0 + m S and So = e S; W, S (BH, ...), M0 (H, ...), a, e, m (BH,)."""
    BH, H = weights.shape[0], initial.shape[0]
    new_weights, new_momentum = torch.empty_like(weights), torch.empty_like(momentum)
    getattr(library(), f"step_forward_{_SUFFIX[weights.dtype]}")(
        _ptr(weights), _ptr(momentum), _ptr(initial), _ptr(a), _ptr(e), _ptr(m), _ptr(new_weights),
        _ptr(new_momentum), BH, H, initial[0].numel())
    return new_weights, new_momentum


def step_backward(g_weights, g_momentum, weights, momentum, initial, a, e, m):
    """(a gW, e gS + m gW, (BH, 3) inner products <gW, W - M0>, <gS, S>, <gW, S>, M0's gradient (H, ...))."""
    BH, H = weights.shape[0], initial.shape[0]
    g_w, g_s = torch.empty_like(weights), torch.empty_like(momentum)
    dots = torch.empty(BH, 3, dtype=weights.dtype)
    g_initial = torch.zeros_like(initial)
    getattr(library(), f"step_backward_{_SUFFIX[weights.dtype]}")(
        _ptr(g_weights), _ptr(g_momentum), _ptr(weights), _ptr(momentum), _ptr(initial), _ptr(a), _ptr(e),
        _ptr(m), _ptr(g_w), _ptr(g_s), _ptr(dots), _ptr(g_initial), BH, H, initial[0].numel())
    return g_w, g_s, dots, g_initial
