"""The comparison helpers of the conformance suite can fail: each is shown a case it must reject."""

from __future__ import annotations

import pytest
import torch

from detspec.conformance._util import assert_same_ranked

TOL = (0.0, 1e-6)


def _case():
    # scores 5 > 4 = 4 = 4 > 3: rows 1..3 form one tied run; rows 0 and 4 are ranked strictly
    scores = torch.tensor([5.0, 4.0, 4.0, 4.0, 3.0])
    rows = torch.tensor([[0.0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3], [3, 3, 4, 4], [4, 4, 5, 5]])
    return rows, scores


def test_tied_run_in_another_order_agrees():
    rows, scores = _case()
    permuted = rows[[0, 3, 1, 2, 4]]  # only the tied run is reordered
    assert_same_ranked(permuted, scores, rows, scores, TOL, TOL, "tied run permuted")


def test_order_outside_a_tied_run_is_checked():
    rows, scores = _case()
    swapped = rows[[4, 1, 2, 3, 0]]  # ranks 0 and 4 have distinct scores
    with pytest.raises(AssertionError, match="no match"):
        assert_same_ranked(swapped, scores, rows, scores, TOL, TOL, "strict ranks swapped")


def test_a_different_row_in_a_tied_run_is_caught():
    rows, scores = _case()
    other = rows.clone()
    other[2] += 0.5
    with pytest.raises(AssertionError, match="no match"):
        assert_same_ranked(other, scores, rows, scores, TOL, TOL, "row changed")


def test_a_duplicate_cannot_stand_for_two_rows():
    rows, scores = _case()
    doubled = rows[[0, 1, 1, 3, 4]]  # row 1 twice, row 2 missing: multisets differ
    with pytest.raises(AssertionError, match="no match"):
        assert_same_ranked(doubled, scores, rows, scores, TOL, TOL, "duplicate")


def test_scores_are_compared_with_the_tolerance():
    rows, scores = _case()
    with pytest.raises(AssertionError, match="scores"):
        assert_same_ranked(rows, scores + torch.tensor([0, 0, 0, 0, 1e-3]), rows, scores, TOL, TOL, "score off")
