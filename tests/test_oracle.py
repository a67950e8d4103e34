"""The numeric oracle on its own: the bound, zero and empty references, non-finite outputs, top-k with ties."""

import math

import numpy as np
import pytest

from converter import oracle


def test_the_bound_is_relative_to_the_reference_and_never_below_atol_or_the_floor():
    reference = np.array([[0.5, -200.0]])
    assert oracle.bound(reference) == pytest.approx(200 * oracle.ATOL)
    assert oracle.bound(reference * 1e-3) == oracle.ATOL  # max(1, max|ref|): small outputs keep an absolute bound
    assert oracle.bound(reference, floor=1.0) == 1.0 and oracle.bound(reference, floor=1e-9) == oracle.bound(reference)
    assert oracle.compare(reference, reference + 0.9 * 200 * oracle.ATOL).ok
    assert not oracle.compare(reference, reference + 1.1 * 200 * oracle.ATOL).ok


def test_a_zero_reference_is_matched_only_near_zero():
    zero = np.zeros((2, 3))
    same = oracle.compare(zero, zero)
    assert same.ok and same.max_abs == 0 and same.max_rel == 0 and same.cosine == 1.0
    near = oracle.compare(zero, zero + 0.5 * oracle.ATOL)
    assert near.ok and near.max_rel == math.inf and near.cosine == 0.0
    assert not oracle.compare(zero, zero + 2 * oracle.ATOL).ok


def test_empty_arrays_and_shape_mismatches_are_errors():
    with pytest.raises(ValueError, match="nothing to compare"):
        oracle.compare(np.zeros((0, 5)), np.zeros((0, 5)))
    with pytest.raises(ValueError, match="differs"):
        oracle.compare(np.zeros((2, 5)), np.zeros((2, 4)))


def test_nan_and_infinite_outputs_fail():
    reference = np.ones((1, 4))
    for bad in (np.nan, np.inf, -np.inf):
        output = reference.copy()
        output[0, 2] = bad
        result = oracle.compare(reference, output, atol=1e9)
        assert not result.ok and result.max_abs == math.inf


def test_top_k_counts_overlap_and_forgives_the_references_ties_only():
    reference = np.array([[9.0, 8, 7, 6, 5, 4, 3]])
    assert oracle.compare(reference, reference).top_k == {1: 1.0, 5: 1.0}
    swapped = np.array([[9.0, 8, 7, 6, 3, 4, 5]])  # the 5th class traded for one outside the top 5
    assert oracle.compare(reference, swapped).top_k == {1: 1.0, 5: 0.8}
    # classes 0 and 1 tie in TF-Slim's output: either is its top class
    tied = np.array([[5.0, 5.0, 1.0]])
    assert oracle.top_k_overlap(tied, np.array([[4.0, 5.0, 1.0]]), 1) == 1.0
    assert oracle.top_k_overlap(tied, np.array([[5.0, 4.0, 1.0]]), 1) == 1.0
    assert oracle.top_k_overlap(tied, np.array([[1.0, 4.0, 5.0]]), 1) == 0.0
    # a constant output (a dead network) agrees only where its first classes happen to be the reference's
    constant = np.zeros((1, 7))
    assert oracle.top_k_overlap(np.array([[0.0, 1, 2, 3, 4, 5, 6]]), constant, 1) == 0.0
    # fewer classes than k: k is the class count, so an identical output overlaps fully
    three = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    assert oracle.top_k_overlap(three, three, 5) == 1.0
    assert oracle.top_k_overlap(three, three[::-1], 1) == 0.0


def test_top_k_is_reported_for_classifier_outputs_only():
    maps = np.ones((1, 2, 2, 3))
    assert oracle.compare(maps, maps).top_k == {}
