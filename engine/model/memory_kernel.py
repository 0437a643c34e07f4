"""The memory's update step for one chunk and layer, fused: one pass over each state tensor, forward and backward.

MemoryStep (engine.model.titans) decays every fast-weight and momentum tensor, adds the chunk's gradient sums (a
rank-L product) and, going back, needs the gates' inner products, M0's gradient and three matrix products with
the incoming gradients. As PyTorch ops each of those is its own pass over 2 MB tensors at the peer's sizes, and
those passes, not the arithmetic, bound the speed. PyTorch has no op that fuses them, and torch.compile's CPU
backend needs tens of seconds per shape to build its kernels, so two C loops (the products written out with
vectors the compiler maps to the machine's SIMD) are compiled here with the system C compiler (about two
seconds, once) and called through ctypes. They split a chunk's rows over PyTorch's own OpenMP threads. Where no
compiler is found, the chunk is longer than MAX_TOKENS, or the tensors are not contiguous float32 or float64
CPU tensors, MemoryStep runs the same arithmetic as PyTorch ops; `TRM_LAB_MEMORY_KERNEL=torch` forces that path.
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

# per row b (head b % H of M0), with X (BH, L, d_in) the layer's inputs, w, u (BH, L) each token's weight in the
# weights' and the momentum's sums, Xw = w X, Xu = u X, and D (BH, L, d_out) the output gradients:
# forward:  Wo = M0 + a (W - M0) + m S + Xw^T D,  So = e S + Xu^T D   (each block of output rows is finished in
#           registers, where the PyTorch path writes the decayed state and reads it back in a matrix product)
# backward: gW_in = a gW,  gS_in = e gS + m gW,  dots[b] = (<gW, W - M0>, <gS, S>, <gW, S>),
#           g_init[h] += (1 - a_b) gW_b,  gD = Xw gW + Xu gS,  gX = w D gW^T + u D gS^T,
#           gw = rowsum(X * D gW^T),  gu = rowsum(X * D gS^T)   (one pass over gW, gS for all of them, where the
#           PyTorch path reads each twice more for its matrix products)
MAX_TOKENS = 64  # tokens per chunk the loops take (their token buffers); longer chunks take the PyTorch path
_SOURCE = f"#define MAX_TOKENS {MAX_TOKENS}\n" + r"""
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
/* one build for every x86 machine: the widest vectors it has are picked when the library loads */
#define CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define CLONES
#endif
#ifdef _OPENMP
#include <omp.h>
#define THREAD omp_get_thread_num()
#else
#define THREAD 0
#endif
#define LOAD(V, p) ({ V v_; __builtin_memcpy(&v_, (p), sizeof v_); v_; })
#define STORE(p, v) do { __typeof__(v) v_ = (v); __builtin_memcpy((p), &v_, sizeof v_); } while (0)
#define ROWS 4          /* weight rows per block in registers: each vector of D loaded feeds 2 ROWS multiply-adds */
#define TOKEN_BLOCK 8   /* tokens whose rows of D's gradient stay in registers while the rows of gW, gS go by */

#define FORWARD(T, SUF)                                                                                       \
typedef T vec_##SUF __attribute__((vector_size(64)));                                                        \
CLONES void step_forward_##SUF(const T* restrict W, const T* restrict S, const T* restrict M0,               \
                               const T* restrict X, long xs, const T* restrict w, const T* restrict u,       \
                               const T* restrict D, const T* a, const T* e, const T* m, T* restrict Wo,      \
                               T* restrict So, long BH, long H, long din, long dout, long L, int threads) {  \
    typedef vec_##SUF V;                                                                                      \
    enum { N = sizeof(V) / sizeof(T) };                                                                       \
    _Pragma("omp parallel for num_threads(threads) schedule(static) if(threads > 1)")                         \
    for (long b = 0; b < BH; b++) {                                                                           \
        T xw[ROWS][MAX_TOKENS], xu[ROWS][MAX_TOKENS];                                                         \
        const T ab = a[b], eb = e[b], mb = m[b];                                                              \
        const T* d = D + b * L * dout;                                                                        \
        for (long i0 = 0; i0 < din; i0 += ROWS) {                                                             \
            const long rows = din - i0 < ROWS ? din - i0 : ROWS;                                              \
            for (long r = 0; r < rows; r++)                                                                   \
                for (long l = 0; l < L; l++) {                                                                \
                    const T x = X[b * xs + l * din + i0 + r];                                                 \
                    xw[r][l] = w[b * L + l] * x;                                                              \
                    xu[r][l] = u[b * L + l] * x;                                                              \
                }                                                                                             \
            const long o = (b * din + i0) * dout, o0 = ((b % H) * din + i0) * dout;                           \
            long j = 0;                                                                                       \
            if (rows == ROWS)                                                                                 \
                for (; j + N <= dout; j += N) {                                                               \
                    V accw[ROWS], accs[ROWS];                                                                 \
                    for (long r = 0; r < ROWS; r++) {                                                         \
                        const long k = o + r * dout + j, k0 = o0 + r * dout + j;                              \
                        const V m0v = LOAD(V, M0 + k0), sv = LOAD(V, S + k);                                  \
                        accw[r] = m0v + ab * (LOAD(V, W + k) - m0v) + mb * sv;                                \
                        accs[r] = eb * sv;                                                                    \
                    }                                                                                         \
                    for (long l = 0; l < L; l++) {                                                            \
                        const V dl = LOAD(V, d + l * dout + j);                                               \
                        for (long r = 0; r < ROWS; r++) {                                                     \
                            accw[r] += xw[r][l] * dl;                                                         \
                            accs[r] += xu[r][l] * dl;                                                         \
                        }                                                                                     \
                    }                                                                                         \
                    for (long r = 0; r < ROWS; r++) {                                                         \
                        STORE(Wo + o + r * dout + j, accw[r]);                                                \
                        STORE(So + o + r * dout + j, accs[r]);                                                \
                    }                                                                                         \
                }                                                                                             \
            for (long r = 0; r < rows; r++)  /* what is left: the last columns, or a last block of fewer rows */ \
                for (long jj = j; jj < dout; jj++) {                                                          \
                    const long k = o + r * dout + jj, k0 = o0 + r * dout + jj;                                \
                    T accw = M0[k0] + ab * (W[k] - M0[k0]) + mb * S[k], accs = eb * S[k];                     \
                    for (long l = 0; l < L; l++) {                                                            \
                        accw += xw[r][l] * d[l * dout + jj];                                                  \
                        accs += xu[r][l] * d[l * dout + jj];                                                  \
                    }                                                                                         \
                    Wo[k] = accw;                                                                             \
                    So[k] = accs;                                                                             \
                }                                                                                             \
        }                                                                                                     \
    }                                                                                                         \
}

/* Dt: D transposed (BH, dout, Lp), its token rows zero-padded to Lp, a whole number of vectors;
   g_init: one (H, din, dout) sum per thread, zeroed by the caller */
#define BACKWARD(T, SUF)                                                                                      \
CLONES void step_backward_##SUF(const T* restrict gW, const T* restrict gS, const T* restrict W,             \
                                const T* restrict S, const T* restrict M0, const T* restrict X, long xs,     \
                                const T* restrict w, const T* restrict u, const T* restrict D,               \
                                const T* restrict Dt, const T* a, const T* e, const T* m, T* restrict gWi,   \
                                T* restrict gSi, T* restrict dots, T* restrict g_init, T* restrict gX,       \
                                T* restrict gw, T* restrict gu, T* restrict gD, long BH, long H, long din,   \
                                long dout, long L, long Lp, int threads) {                                    \
    typedef vec_##SUF V;                                                                                      \
    enum { N = sizeof(V) / sizeof(T) };                                                                       \
    const long full = dout - dout % N;                                                                        \
    _Pragma("omp parallel for num_threads(threads) schedule(static) if(threads > 1)")                         \
    for (long b = 0; b < BH; b++) {                                                                           \
        const T ab = a[b], cb = (T)1 - a[b], eb = e[b], mb = m[b];                                            \
        const long o = b * din * dout, o0 = (b % H) * din * dout;                                             \
        const T* x = X + b * xs; const T* wb = w + b * L; const T* ub = u + b * L;                            \
        const T* dt = Dt + b * dout * Lp;                                                                     \
        T* gd = gD + b * L * dout; T* gx = gX + b * L * din;                                                  \
        T* gi = g_init + (long)THREAD * H * din * dout;                                                       \
        /* the elementwise outputs and the gates' inner products, in memory order */                          \
        V da = {0}, de = {0}, dm = {0};                                                                       \
        T sa = 0, se = 0, sm = 0;                                                                             \
        for (long i = 0; i < din; i++) {                                                                      \
            const long k = o + i * dout, k0 = o0 + i * dout;                                                  \
            for (long j = 0; j < full; j += N) {                                                              \
                const V g = LOAD(V, gW + k + j), h = LOAD(V, gS + k + j), sv = LOAD(V, S + k + j);            \
                STORE(gWi + k + j, ab * g);                                                                   \
                STORE(gSi + k + j, eb * h + mb * g);                                                          \
                da += g * (LOAD(V, W + k + j) - LOAD(V, M0 + k0 + j));                                        \
                de += h * sv;                                                                                 \
                dm += g * sv;                                                                                 \
                STORE(gi + k0 + j, LOAD(V, gi + k0 + j) + cb * g);                                            \
            }                                                                                                 \
            for (long j = full; j < dout; j++) {                                                              \
                const T g = gW[k + j], h = gS[k + j];                                                         \
                gWi[k + j] = ab * g;                                                                          \
                gSi[k + j] = eb * h + mb * g;                                                                 \
                gi[k0 + j] += cb * g;                                                                         \
                sa += g * (W[k + j] - M0[k0 + j]);                                                            \
                se += h * S[k + j];                                                                           \
                sm += g * S[k + j];                                                                           \
            }                                                                                                 \
        }                                                                                                     \
        for (int q = 0; q < N; q++) { sa += da[q]; se += de[q]; sm += dm[q]; }                                \
        dots[3 * b] = sa; dots[3 * b + 1] = se; dots[3 * b + 2] = sm;                                         \
        /* D's gradient Xw gW + Xu gS = w X gW + u X gS: the sums X gW, X gS for TOKEN_BLOCK tokens in         \
           registers while all rows of gW, gS go by, scaled by w, u at the end */                              \
        for (long j = 0; j < full; j += N)                                                                    \
            for (long l0 = 0; l0 < L; l0 += TOKEN_BLOCK) {                                                    \
                const long n = L - l0 < TOKEN_BLOCK ? L - l0 : TOKEN_BLOCK;                                   \
                V accw[TOKEN_BLOCK] = {{0}}, accu[TOKEN_BLOCK] = {{0}};                                       \
                if (n == TOKEN_BLOCK)  /* a constant trip count: the compiler keeps the sums in registers */   \
                    for (long i = 0; i < din; i++) {                                                          \
                        const V g = LOAD(V, gW + o + i * dout + j), h = LOAD(V, gS + o + i * dout + j);       \
                        for (long q = 0; q < TOKEN_BLOCK; q++) {                                              \
                            accw[q] += x[(l0 + q) * din + i] * g;                                             \
                            accu[q] += x[(l0 + q) * din + i] * h;                                             \
                        }                                                                                     \
                    }                                                                                         \
                else                                                                                          \
                    for (long i = 0; i < din; i++) {                                                          \
                        const V g = LOAD(V, gW + o + i * dout + j), h = LOAD(V, gS + o + i * dout + j);       \
                        for (long q = 0; q < n; q++) {                                                        \
                            accw[q] += x[(l0 + q) * din + i] * g;                                             \
                            accu[q] += x[(l0 + q) * din + i] * h;                                             \
                        }                                                                                     \
                    }                                                                                         \
                for (long q = 0; q < n; q++)                                                                  \
                    STORE(gd + (l0 + q) * dout + j, wb[l0 + q] * accw[q] + ub[l0 + q] * accu[q]);             \
            }                                                                                                 \
        for (long l = 0; l < L; l++)                                                                          \
            for (long j = full; j < dout; j++) {                                                              \
                T accw = 0, accu = 0;                                                                         \
                for (long i = 0; i < din; i++) {                                                              \
                    accw += x[l * din + i] * gW[o + i * dout + j];                                            \
                    accu += x[l * din + i] * gS[o + i * dout + j];                                            \
                }                                                                                             \
                gd[l * dout + j] = wb[l] * accw + ub[l] * accu;                                               \
            }                                                                                                 \
        /* X's gradient w D gW^T + u D gS^T and the token weights' X . D gW^T, X . D gS^T: per row a vector   \
           over tokens, D^T's rows times the row's entries */                                                  \
        T sw[MAX_TOKENS] = {0}, su[MAX_TOKENS] = {0};                                                         \
        for (long i0 = 0; i0 < din; i0 += ROWS) {                                                             \
            const long rows = din - i0 < ROWS ? din - i0 : ROWS, k = o + i0 * dout;                           \
            for (long lv = 0; lv < Lp; lv += N) {                                                             \
                const long n = L - lv < N ? L - lv : N;                                                       \
                V pw[ROWS] = {{0}}, pu[ROWS] = {{0}};                                                         \
                if (rows == ROWS)                                                                             \
                    for (long j = 0; j < dout; j++) {                                                         \
                        const V dv = LOAD(V, dt + j * Lp + lv);                                               \
                        for (long r = 0; r < ROWS; r++) {                                                     \
                            pw[r] += gW[k + r * dout + j] * dv;                                               \
                            pu[r] += gS[k + r * dout + j] * dv;                                               \
                        }                                                                                     \
                    }                                                                                         \
                else                                                                                          \
                    for (long r = 0; r < rows; r++)                                                           \
                        for (long j = 0; j < dout; j++) {                                                     \
                            const V dv = LOAD(V, dt + j * Lp + lv);                                           \
                            pw[r] += gW[k + r * dout + j] * dv;                                               \
                            pu[r] += gS[k + r * dout + j] * dv;                                               \
                        }                                                                                     \
                for (long r = 0; r < rows; r++)                                                               \
                    for (long q = 0; q < n; q++) {                                                            \
                        const long t = (lv + q) * din + i0 + r;                                               \
                        gx[t] = wb[lv + q] * pw[r][q] + ub[lv + q] * pu[r][q];                                \
                        sw[lv + q] += x[t] * pw[r][q];                                                        \
                        su[lv + q] += x[t] * pu[r][q];                                                        \
                    }                                                                                         \
            }                                                                                                 \
        }                                                                                                     \
        for (long l = 0; l < L; l++) { gw[b * L + l] = sw[l]; gu[b * L + l] = su[l]; }                        \
    }                                                                                                         \
}
FORWARD(float, f32)
FORWARD(double, f64)
BACKWARD(float, f32)
BACKWARD(double, f64)
"""
# with -fopenmp the loops split a chunk's rows over PyTorch's own OpenMP threads (the runtime PyTorch loaded is the one
# the library links to); where the compiler has no OpenMP, the same loops build without it and run on one thread
_FLAG_SETS = (["-O3", "-fopenmp", "-fPIC", "-shared"], ["-O3", "-fPIC", "-shared"])
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
    for flags in _FLAG_SETS:
        lib = _build(compiler, flags)
        if lib is not None:
            break
    else:
        return None
    for suffix in _SUFFIX.values():  # tensors go in as addresses, sizes as C longs, the thread count as a C int
        pointers, sizes = ctypes.c_void_p, ctypes.c_long  # X comes with its batch stride: it is a slice
        getattr(lib, f"step_forward_{suffix}").argtypes = [pointers] * 4 + [sizes] + [pointers] * 8 + [sizes] * 5 + [
            ctypes.c_int]
        getattr(lib, f"step_backward_{suffix}").argtypes = [pointers] * 6 + [sizes] + [pointers] * 15 + [sizes] * 6 + [
            ctypes.c_int]
        getattr(lib, f"step_forward_{suffix}").restype = None
        getattr(lib, f"step_backward_{suffix}").restype = None
    return lib


def _build(compiler: str, flags: list[str]) -> ctypes.CDLL | None:
    """The library built with these flags (or found built before); None where the compiler or the loader fails."""
    key = hashlib.sha256("\0".join([_SOURCE, compiler, *flags, platform.machine()]).encode()).hexdigest()[:16]
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / "trm-lab-kernels"):
        target = folder / f"memory_step_{key}.so"
        try:
            if not target.exists():
                folder.mkdir(parents=True, exist_ok=True)
                # build beside the target and rename: processes that start together never load a half-written file
                with tempfile.TemporaryDirectory(dir=folder) as tmp:
                    source, built = Path(tmp) / "memory_step.c", Path(tmp) / "memory_step.so"
                    source.write_text(_SOURCE)
                    subprocess.run([compiler, *flags, str(source), "-o", str(built)], check=True,
                                   capture_output=True, timeout=120)
                    os.replace(built, target)
            return ctypes.CDLL(str(target))
        except (OSError, subprocess.SubprocessError):
            continue
    return None


def usable(*tensors: torch.Tensor, tokens: int = 1) -> bool:
    """Whether the C loops take these tensors and a chunk of `tokens` tokens: contiguous CPU tensors of one dtype
    they are built for, and at most MAX_TOKENS tokens."""
    if torch.compiler.is_compiling():  # the compiler fuses the PyTorch ops itself and cannot trace a ctypes call
        return False
    first = tensors[0]
    return (first.dtype in _SUFFIX and tokens <= MAX_TOKENS and name() == "c"
            and all(t.device.type == "cpu" and t.dtype == first.dtype and t.is_contiguous() for t in tensors))


def name() -> str:
    """Which path MemoryStep takes for contiguous float CPU tensors."""
    return "c" if library() is not None else "torch"


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _rows(X: torch.Tensor) -> torch.Tensor:
    """X (BH, L, d_in) with each batch row's tokens contiguous (a slice along the tokens is), as the loops read it."""
    return X if X.stride(2) == 1 and X.stride(1) == X.shape[2] else X.contiguous()


def step_forward(weights, momentum, initial, X, w, u, D, a, e, m):
    """(Wo, So) with Wo = a W + (1 - a) M0 + m S + (w X)^T D and So = e S + (u X)^T D; W, S (BH, d_in, d_out),
    M0 (H, d_in, d_out), X (BH, L, d_in), w, u (BH, L), D (BH, L, d_out), L <= MAX_TOKENS, a, e, m (BH,)."""
    BH, H = weights.shape[0], initial.shape[0]
    X = _rows(X)
    new_weights, new_momentum = torch.empty_like(weights), torch.empty_like(momentum)
    getattr(library(), f"step_forward_{_SUFFIX[weights.dtype]}")(
        _ptr(weights), _ptr(momentum), _ptr(initial), _ptr(X), X.stride(0), _ptr(w), _ptr(u), _ptr(D), _ptr(a),
        _ptr(e), _ptr(m), _ptr(new_weights), _ptr(new_momentum), BH, H, *weights.shape[1:], D.shape[1],
        torch.get_num_threads())
    return new_weights, new_momentum


def step_backward(g_weights, g_momentum, weights, momentum, initial, X, w, u, D, a, e, m):
    """The gradients of step_forward's inputs from those of its outputs (gW, gS): (a gW, e gS + m gW, (BH, 3) inner
    products <gW, W - M0>, <gS, S>, <gW, S>, M0's gradient (H, ...), X's, w's, u's and D's)."""
    BH, H = weights.shape[0], initial.shape[0]
    L, threads = D.shape[1], torch.get_num_threads()
    X = _rows(X)
    g_w, g_s = torch.empty_like(weights), torch.empty_like(momentum)
    dots = torch.empty(BH, 3, dtype=weights.dtype)
    g_X, g_D = torch.empty(X.shape, dtype=X.dtype), torch.empty_like(D)
    g_tw, g_tu = torch.empty_like(w), torch.empty_like(u)
    padded = -(-L // 16) * 16  # D^T's token rows padded to whole 64-byte vectors: the loop reads one per column
    D_t = torch.zeros(BH, D.shape[2], padded, dtype=D.dtype)
    D_t[:, :, :L] = D.transpose(1, 2)
    g_initials = torch.zeros(threads, *initial.shape, dtype=initial.dtype)  # M0's gradient, a sum per thread
    getattr(library(), f"step_backward_{_SUFFIX[weights.dtype]}")(
        _ptr(g_weights), _ptr(g_momentum), _ptr(weights), _ptr(momentum), _ptr(initial), _ptr(X), X.stride(0),
        _ptr(w), _ptr(u), _ptr(D), _ptr(D_t), _ptr(a), _ptr(e), _ptr(m), _ptr(g_w), _ptr(g_s), _ptr(dots),
        _ptr(g_initials), _ptr(g_X), _ptr(g_tw), _ptr(g_tu), _ptr(g_D), BH, H, *weights.shape[1:], L, padded, threads)
    g_initial = g_initials.sum(0) if threads > 1 else g_initials[0]
    return g_w, g_s, dots, g_initial, g_X, g_tw, g_tu, g_D
