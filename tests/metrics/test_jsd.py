"""JSD and RF-JSD: invariances, bounds, hand-computed values and a float64 NumPy reference."""
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lotus_jax.metrics import batch_statistics, class_means, js_divergence_rows, jsd, rf_jsd

LN2 = math.log(2.0)


def np_jsd(p: np.ndarray, q: np.ndarray, mask: np.ndarray | None, form: str) -> float:
    """Float64 reference: textbook JS mean, or the reference code's compat form."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    if mask is not None:
        p, q = p[mask], q[mask]
    n = p.shape[0]
    if form == "textbook":
        m = (p + q) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            kl_pm = np.where(p > 0, p * np.log(p / m), 0.0).sum(-1)
            kl_qm = np.where(q > 0, q * np.log(q / m), 0.0).sum(-1)
        return float(np.mean(0.5 * kl_pm + 0.5 * kl_qm))
    p = np.clip(p, 1e-8, 1.0)
    q = np.clip(q, 1e-8, 1.0)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    return float(np.sum(0.5 * (m * np.log(m / p) + m * np.log(m / q))) / n)


def dirichlet(seed: int, n: int, k: int, alpha: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(k, alpha), size=n).astype(np.float32)


def np_class_means(probs: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros((k, probs.shape[1]))
    np.add.at(sums, labels, probs)
    return sums / np.maximum(counts, 1)[:, None], counts


def np_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


class JsdTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("textbook", "compat")
    def test_identical_is_zero(self, form):
        p = dirichlet(0, 6, 4)
        fn = self.variant(functools.partial(jsd, form=form))
        np.testing.assert_allclose(fn(p, p), 0.0, atol=1e-7)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("textbook", "compat")
    def test_symmetric(self, form):
        p, q = dirichlet(1, 7, 5), dirichlet(2, 7, 5)
        fn = self.variant(functools.partial(jsd, form=form))
        np.testing.assert_allclose(fn(p, q), fn(q, p), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_textbook_bounded_and_disjoint_one_hots_reach_ln2(self):
        rows = self.variant(js_divergence_rows)(dirichlet(3, 50, 3, 0.05), dirichlet(4, 50, 3, 0.05))
        self.assertTrue(bool(jnp.all(rows <= LN2 + 1e-6)))
        self.assertTrue(bool(jnp.all(rows >= 0.0)))
        eye = np.eye(4, dtype=np.float32)
        disjoint = self.variant(jsd)(eye, np.roll(eye, 1, axis=1))
        np.testing.assert_allclose(disjoint, LN2, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(form=("textbook", "compat"), masked=(False, True))
    def test_matches_float64_numpy(self, form, masked):
        p, q = dirichlet(5, 12, 6), dirichlet(6, 12, 6)
        mask = np.random.default_rng(7).random(12) < 0.6 if masked else None
        if masked:
            p[~mask] = np.nan
        got = self.variant(functools.partial(jsd, form=form))(p, q, mask)
        np.testing.assert_allclose(got, np_jsd(p, q, mask, form), rtol=1e-5, atol=1e-8)

    def test_hand_computed_textbook(self):
        # Row 0: m = (.75, .25); KL(p||m) = ln(4/3), KL(q||m) = ln(4/3)/2, JS = .75 ln(4/3). Row 1: 0.
        p = np.array([[1.0, 0.0], [0.5, 0.5]], np.float32)
        q = np.array([[0.5, 0.5], [0.5, 0.5]], np.float32)
        np.testing.assert_allclose(jsd(p, q), 0.375 * math.log(4 / 3), rtol=1e-6)

    def test_hand_computed_compat(self):
        # Totals are 2, so p' = p/2, q' = q/2 and m = .25 everywhere. Row 0 terms:
        # 2 entries x 0.5 * .25 * (ln(.25/.375) + ln(.25/.125)) = .25 ln(4/3); row 1: 0; divided by N=2.
        p = np.array([[0.75, 0.25], [0.5, 0.5]], np.float32)
        q = np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)
        np.testing.assert_allclose(jsd(p, q, form="compat"), 0.125 * math.log(4 / 3), rtol=1e-6)

    def test_masked_rows_contribute_nothing(self):
        p, q = dirichlet(8, 5, 3), dirichlet(9, 5, 3)
        mask = np.array([True, True, False, True, False])
        for form in ("textbook", "compat"):
            garbage_p, garbage_q = p.copy(), q.copy()
            garbage_p[~mask], garbage_q[~mask] = 7.0, -3.0
            np.testing.assert_allclose(
                jsd(garbage_p, garbage_q, mask, form), jsd(p[mask], q[mask], form=form), rtol=1e-6
            )

    def test_unknown_form(self):
        with self.assertRaisesRegex(ValueError, "textbook"):
            jsd(np.eye(2), np.eye(2), form="bogus")

    @parameterized.parameters("textbook", "compat")
    def test_sharded_equals_single_device(self, form):
        devices = jax.devices()
        chex.assert_equal(len(devices), 8)
        mesh = Mesh(np.array(devices), ("data",))
        p, q = dirichlet(10, 32, 5), dirichlet(11, 32, 5)
        mask = np.arange(32) < 27
        shard = functools.partial(jax.device_put, device=NamedSharding(mesh, P("data")))
        fn = jax.jit(functools.partial(jsd, form=form))
        np.testing.assert_allclose(fn(shard(p), shard(q), shard(mask)), fn(p, q, mask), rtol=1e-5)


class RfJsdTest(chex.TestCase):

    K = 5

    def _accumulate(self, logits, labels, batch_size, seed):
        """Per-class sums accumulated batch by batch, the last batch padded with garbage masked rows."""
        rng = np.random.default_rng(seed)
        stats = jax.jit(batch_statistics, static_argnums=3)
        sums = np.zeros((self.K, self.K), np.float32)
        counts = np.zeros(self.K, np.int64)
        for start in range(0, len(labels), batch_size):
            x, y = logits[start:start + batch_size], labels[start:start + batch_size]
            pad = batch_size - len(y)
            x = np.concatenate([x, rng.normal(size=(pad, self.K)).astype(np.float32) * 10])
            y = np.concatenate([y, rng.integers(0, self.K, pad)])
            mask = np.arange(batch_size) < batch_size - pad
            out = stats(x, y, mask, self.K)
            sums += np.asarray(out["prob_sums"])
            counts += np.asarray(out["counts"])
        return sums, counts

    @parameterized.parameters("textbook", "compat")
    def test_batch_size_and_padding_invariant_and_matches_float64(self, form):
        rng = np.random.default_rng(0)
        lf, yf = rng.normal(size=(37, self.K)).astype(np.float32) * 2, rng.integers(0, self.K, 37)
        lu, yu = rng.normal(size=(29, self.K)).astype(np.float32) * 2, rng.integers(0, self.K, 29)
        values = []
        for bs in (4, 8, 16, 64):
            ps, pc = self._accumulate(lf, yf, bs, seed=bs)
            qs, qc = self._accumulate(lu, yu, bs, seed=bs + 1)
            values.append(float(rf_jsd(ps, pc, qs, qc, form)))
        np.testing.assert_allclose(values, values[0], rtol=1e-5)
        pm, pcount = np_class_means(np_softmax(lf), yf, self.K)
        qm, qcount = np_class_means(np_softmax(lu), yu, self.K)
        expected = np_jsd(pm, qm, (pcount > 0) & (qcount > 0), form)
        np.testing.assert_allclose(values[0], expected, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("textbook", "compat")
    def test_ignores_classes_absent_from_either_side(self, form):
        p_means, q_means = dirichlet(20, self.K, self.K), dirichlet(21, self.K, self.K)
        p_counts = np.array([3, 2, 4, 0, 0])
        q_counts = np.array([0, 5, 1, 6, 0])
        p_sums = p_means * p_counts[:, None]
        q_sums = q_means * q_counts[:, None]
        q_sums[0] = 9.0  # junk in a class absent from q must be ignored
        fn = self.variant(functools.partial(rf_jsd, form=form))
        got = fn(p_sums, p_counts, q_sums, q_counts)
        expected = np_jsd(p_means[1:3], q_means[1:3], None, form)
        np.testing.assert_allclose(got, expected, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("textbook", "compat")
    def test_identical_is_zero_and_symmetric(self, form):
        sums, counts = dirichlet(22, 4, 4) * 3, np.array([3, 3, 3, 3])
        other = dirichlet(23, 4, 4) * 2
        fn = self.variant(functools.partial(rf_jsd, form=form))
        np.testing.assert_allclose(fn(sums, counts, sums, counts), 0.0, atol=1e-7)
        np.testing.assert_allclose(
            fn(sums, counts, other, counts * 0 + 2), fn(other, counts * 0 + 2, sums, counts), rtol=1e-6
        )

    def test_class_means(self):
        sums = np.array([[2.0, 4.0], [0.0, 0.0], [1.0, 1.0]], np.float32)
        counts = np.array([2, 0, 4])
        np.testing.assert_allclose(class_means(sums, counts), [[1.0, 2.0], [0.0, 0.0], [0.25, 0.25]])

