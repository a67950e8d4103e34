"""The one numeric oracle: how ported outputs are compared with the TF-Slim reference.

Tests and ``ckpt-convert verify`` both judge equivalence here and nowhere else, so a tolerance
changes in one place. An end point passes when ``max|out - ref| <= atol * max(1, max|ref|)``.
"""

import dataclasses

import numpy as np

# max |delta| allowed, relative to max(1, max|ref|); DESIGN's bound is 1e-4, float32 ports land near 1e-5
ATOL = 1e-4
# the same for ports stored in float16 or bfloat16: rounding the weights alone moves outputs by ~1e-3
REDUCED_PRECISION_ATOL = 1e-2
REDUCED_PRECISION = ("float16", "bfloat16")
# top-k overlap is reported for these k (top-1: the share of rows whose top class agrees)
TOP_K = (1, 5)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """How one output compares with its reference."""

    max_abs: float
    max_rel: float  # max |delta| / max |reference|
    cosine: float
    bound: float
    top_k: dict  # k -> top-k overlap, averaged over rows: |top-k(ref) & top-k(out)| / k (classifier outputs only)

    @property
    def ok(self):
        return self.max_abs <= self.bound


def atol_for(dtypes):
    """The bound for a port whose tensors have ``dtypes``: looser where any is reduced precision."""
    return REDUCED_PRECISION_ATOL if any(str(d) in REDUCED_PRECISION for d in dtypes) else ATOL


def bound(reference, atol=ATOL):
    """The largest |delta| allowed against ``reference``."""
    return atol * max(1.0, float(np.max(np.abs(reference))) if reference.size else 1.0)


def compare(reference, output, *, atol=ATOL):
    """Compare ``output`` with ``reference`` (same shape); classifier outputs ``[N, classes]`` get top-k."""
    reference = np.asarray(reference, dtype=np.float64)
    output = np.asarray(output, dtype=np.float64)
    if reference.shape != output.shape:
        raise ValueError(f"shape {output.shape} differs from the reference's {reference.shape}")
    delta = np.abs(output - reference)
    max_abs = float(delta.max()) if delta.size else 0.0
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    max_rel = max_abs / scale if scale else (0.0 if max_abs == 0.0 else float("inf"))
    norms = np.linalg.norm(reference) * np.linalg.norm(output)
    cosine = float(np.dot(reference.ravel(), output.ravel()) / norms) if norms else float(max_abs == 0.0)
    top_k = {}
    if reference.ndim == 2:
        for k in TOP_K:
            want = np.argsort(-reference, axis=1)[:, :k]
            got = np.argsort(-output, axis=1)[:, :k]
            # overlap: the share of the reference's k highest classes among the output's k highest
            top_k[k] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(want, got)]))
    return Comparison(max_abs, max_rel, cosine, bound(reference, atol), top_k)
