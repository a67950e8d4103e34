"""The one numeric oracle: how ported outputs are compared with the TF-Slim reference.

Tests and ``ckpt-convert verify`` both judge equivalence here and nowhere else, so a tolerance
changes in one place. An end point passes when ``max|out - ref| <= atol * max(1, max|ref|)``.
"""

import dataclasses
import math

import numpy as np

from converter import graph

# max |delta| allowed, relative to max(1, max|ref|); DESIGN's bound is 1e-4, float32 ports land near 1e-5
ATOL = 1e-4
# the same for ports stored in float16 or bfloat16 where the network's depth is not known
REDUCED_PRECISION_ATOL = 1e-2
REDUCED_PRECISION = ("float16", "bfloat16")
# unit roundoff (half the spacing of numbers near 1) of each reduced-precision dtype: 11 and 8 significant bits
UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
# A port stored in a reduced-precision dtype rounds every weight by up to u (and, where the runtime
# computes in that dtype, every activation); through a network of depth L (weight layers on its longest
# path) the relative errors add up as a random walk, ~u * sqrt(L). Measured on every built-in
# architecture at full size (seeded weights; torch exact module, and ONNX computing in float16):
# max|delta| / max(1, max|ref|) / (u * sqrt(L)) = 0.18 to 0.80, so the bound is 2x that sum, a margin of
# 2.5x over the worst honest port (benchmarks/bench_reduced_precision.py; README "Reduced precision").
REDUCED_PRECISION_FACTOR = 2.0
# Networks whose layers amplify errors drift further (MobileNet V2 float16: 4.4x u * sqrt(L) at Conv_1).
# Each end point's bound is also at least this many times the drift the network itself shows under a
# perturbation as large as rounding's (``converter.sensitivity``), which tracks honest rounding's drift
# within 0.58-1.15x on every MobileNet end point: the margin is 1.7x or more.
DRIFT_FACTOR = 2.0
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


def coarsest(dtypes):
    """The reduced-precision dtype (``float16``, ``bfloat16``) of ``dtypes`` with the largest unit roundoff, or None."""
    reduced = {str(d) for d in dtypes} & UNIT_ROUNDOFF.keys()
    return max(reduced, key=UNIT_ROUNDOFF.get) if reduced else None


def atol_for(dtypes, depth=None):
    """The bound for a port whose tensors have ``dtypes``, through a network of ``depth`` layers.

    float32: ``ATOL``. float16 or bfloat16: ``REDUCED_PRECISION_FACTOR * u * sqrt(depth)`` for the
    coarsest dtype's unit roundoff ``u`` (``REDUCED_PRECISION_ATOL`` where ``depth`` is not known).
    """
    dtype = coarsest(dtypes)
    if dtype is None:
        return ATOL
    if not depth:
        return REDUCED_PRECISION_ATOL
    return max(ATOL, REDUCED_PRECISION_FACTOR * UNIT_ROUNDOFF[dtype] * math.sqrt(depth))


def depth(nodes):
    """Weight layers on the longest path through a mapping table's ``graph`` (branches: the deepest)."""

    def nodes_depth(nodes):
        return sum(node_depth(node) for node in nodes)

    def node_depth(node):
        if isinstance(node, graph.Layer):
            return 1
        return max((nodes_depth(branch) for branch in node.parts()), default=0)

    return nodes_depth(nodes)


def bound(reference, atol=ATOL, floor=0.0):
    """The largest |delta| allowed against ``reference``: ``atol`` relative to it, and at least ``floor``."""
    return max(floor, atol * max(1.0, float(np.max(np.abs(reference))) if reference.size else 1.0))


def top_k_overlap(reference, output, k):
    """The share of the reference's ``k`` highest classes among the output's ``k`` highest, averaged over rows.

    ``k`` is at most the class count. A reference class tied with its k-th highest counts as one of its k
    highest (TF-Slim's ranking of equal scores is arbitrary); the output's k are its k highest, ties taken
    in class order, so a constant output does not agree with everything.
    """
    k = min(k, reference.shape[1])
    shares = []
    for want, got in zip(reference, output):
        tied = set(np.flatnonzero(want >= np.sort(want)[-k]).tolist())
        top = set(np.argsort(-got, kind="stable")[:k].tolist())
        shares.append(len(tied & top) / k)
    return float(np.mean(shares))


def compare(reference, output, *, atol=ATOL, floor=0.0):
    """Compare ``output`` with ``reference`` (same shape); classifier outputs ``[N, classes]`` get top-k.

    The bound is ``atol * max(1, max|ref|)``, and at least ``floor`` (an absolute bound measured elsewhere).
    An all-zero reference is matched only by outputs within ``atol`` of zero; NaN or infinite outputs fail;
    empty arrays are an error (nothing compared proves nothing).
    """
    reference = np.asarray(reference, dtype=np.float64)
    output = np.asarray(output, dtype=np.float64)
    if reference.shape != output.shape:
        raise ValueError(f"shape {output.shape} differs from the reference's {reference.shape}")
    if not reference.size:
        raise ValueError(f"nothing to compare: shape {reference.shape} is empty")
    delta = np.abs(output - reference)
    max_abs = float(delta.max()) if np.isfinite(delta).all() else float("inf")
    scale = float(np.abs(reference).max())
    max_rel = max_abs / scale if scale else (0.0 if max_abs == 0.0 else float("inf"))
    with np.errstate(invalid="ignore", over="ignore"):  # a NaN or infinite output's cosine is NaN
        norms = np.linalg.norm(reference) * np.linalg.norm(output)
        cosine = float(np.dot(reference.ravel(), output.ravel()) / norms) if norms else float(max_abs == 0.0)
    top_k = {k: top_k_overlap(reference, output, k) for k in TOP_K} if reference.ndim == 2 else {}
    return Comparison(max_abs, max_rel, cosine, bound(reference, atol, floor), top_k)
