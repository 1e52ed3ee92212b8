"""Avg Gap: hand-computed values with and without rounding."""
import pytest

from lotus_jax.metrics import avg_gap


def test_hand_computed():
    model = {"mia": 0.5, "acc_forget": 0.9, "acc_retain": 0.95, "acc_test": 0.8, "jsd": 9.0}
    gold = {"mia": 0.4, "acc_forget": 0.8, "acc_retain": 0.99, "acc_test": 0.85, "jsd": 0.0}
    assert avg_gap(model, gold) == pytest.approx((0.1 + 0.1 + 0.04 + 0.05) / 4)


def test_rounding_to_two_decimals():
    model = {"mia": 0.123, "acc_forget": 0.456, "acc_retain": 0.999, "acc_test": 0.5}
    gold = {"mia": 0.101, "acc_forget": 0.444, "acc_retain": 0.991, "acc_test": 0.5}
    assert avg_gap(model, gold) == pytest.approx((0.022 + 0.012 + 0.008 + 0.0) / 4)
    # Rounded: 0.12 vs 0.10, 0.46 vs 0.44, 1.00 vs 0.99, 0.50 vs 0.50.
    assert avg_gap(model, gold, decimals=2) == pytest.approx((0.02 + 0.02 + 0.01 + 0.0) / 4)


def test_gold_against_itself_is_zero_and_custom_keys():
    gold = {"mia": 0.3, "acc_forget": 0.7, "acc_retain": 0.9, "acc_test": 0.6}
    assert avg_gap(gold, gold) == 0.0
    assert avg_gap({"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 3.0}, keys=("a", "b")) == pytest.approx(1.5)


def test_missing_key_raises():
    with pytest.raises(KeyError):
        avg_gap({"mia": 0.1}, {"mia": 0.2})
