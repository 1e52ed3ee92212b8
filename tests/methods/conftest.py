"""Session fixtures: the trained tiny problems shared by the method tests (each trains in a few seconds)."""

import pytest

from tests.methods.helpers import trained_problem


@pytest.fixture(scope="session")
def problem():
    """(ctx, original): digits, 10% per-class forget set, tiny CNN trained on forget ∪ retain."""
    return trained_problem(seed=0)


@pytest.fixture(scope="session")
def class_problem():
    """(ctx, original) with class 0 as the forget set (class unlearning)."""
    return trained_problem(seed=0, forget_mode="class")
