"""batch_statistics: float64 agreement, masking, bf16 logits, sharding."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lotus_jax.metrics import accuracy, batch_statistics

K = 4


def np_reference(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    entropy = -np.sum(p * np.log(p), -1)
    sums = np.zeros((K, K))
    np.add.at(sums, labels[mask], p[mask])
    return {
        "probs": np.where(mask[:, None], p, 0.0),
        "entropy": np.where(mask, entropy, 0.0),
        "correct": (p.argmax(-1) == labels) & mask,
        "prob_sums": sums,
        "counts": np.bincount(labels[mask], minlength=K),
    }


def make_batch(seed: int, n: int = 16):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, K)) * 3).astype(np.float32)
    labels = rng.integers(0, K, n)
    mask = rng.random(n) < 0.7
    return logits, labels, mask


class BatchStatisticsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_float64(self):
        logits, labels, mask = make_batch(0)
        out = self.variant(functools.partial(batch_statistics, num_classes=K))(logits, labels, mask)
        ref = np_reference(logits, labels, mask)
        chex.assert_shape(out["probs"], (16, K))
        chex.assert_shape(out["prob_sums"], (K, K))
        chex.assert_type([out["probs"], out["entropy"], out["prob_sums"]], jnp.float32)
        for key in ("probs", "entropy", "prob_sums"):
            np.testing.assert_allclose(out[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
        np.testing.assert_array_equal(out["correct"], ref["correct"])
        np.testing.assert_array_equal(out["counts"], ref["counts"])

    @chex.variants(with_jit=True, without_jit=True)
    def test_padded_rows_contribute_nothing(self):
        logits, labels, _ = make_batch(1, n=6)
        padded_logits = np.concatenate([logits, np.full((3, K), 50.0, np.float32)])
        padded_labels = np.concatenate([labels, [-1, 0, K - 1]])
        mask = np.arange(9) < 6
        fn = self.variant(functools.partial(batch_statistics, num_classes=K))
        padded, plain = fn(padded_logits, padded_labels, mask), fn(logits, labels, None)
        np.testing.assert_allclose(padded["prob_sums"], plain["prob_sums"], rtol=1e-6)
        np.testing.assert_array_equal(padded["counts"], plain["counts"])
        np.testing.assert_array_equal(padded["entropy"][6:], 0.0)
        np.testing.assert_array_equal(padded["correct"][6:], False)

    @chex.variants(with_jit=True, without_jit=True)
    def test_bf16_logits(self):
        logits, labels, mask = make_batch(2)
        bf16 = jnp.asarray(logits, jnp.bfloat16)
        out = self.variant(functools.partial(batch_statistics, num_classes=K))(bf16, labels, mask)
        chex.assert_type([out["probs"], out["entropy"], out["prob_sums"]], jnp.float32)
        ref = np_reference(np.asarray(bf16.astype(jnp.float32)), labels, mask)
        np.testing.assert_allclose(out["entropy"], ref["entropy"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["prob_sums"], ref["prob_sums"], rtol=1e-5, atol=1e-6)

    def test_sharded_equals_single_device(self):
        devices = jax.devices()
        chex.assert_equal(len(devices), 8)
        sharding = NamedSharding(Mesh(np.array(devices), ("data",)), P("data"))
        logits, labels, mask = make_batch(3, n=32)
        fn = jax.jit(batch_statistics, static_argnums=3)
        single = fn(logits, labels, mask, K)
        sharded = fn(*(jax.device_put(a, sharding) for a in (logits, labels, mask)), K)
        for key in single:
            np.testing.assert_allclose(sharded[key], single[key], rtol=1e-6, atol=1e-7, err_msg=key)

    @chex.variants(with_jit=True, without_jit=True)
    def test_accuracy(self):
        correct = np.array([True, False, True, True, False])
        mask = np.array([True, True, True, False, False])
        np.testing.assert_allclose(self.variant(accuracy)(correct, mask), 2 / 3, rtol=1e-6)
        np.testing.assert_allclose(self.variant(accuracy)(correct, None), 3 / 5, rtol=1e-6)
