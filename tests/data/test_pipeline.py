"""Batching: fixed-size padded batches that visit each example exactly once; sharding over the mesh;
on-device preprocessing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lotus_jax.data import pipeline
from lotus_jax.data.sources import ArraySource
from lotus_jax.data.transforms import Preprocess, random_crop
from lotus_jax.errors import ConfigError


def _source(n=23):
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
    return ArraySource(images, (np.arange(n) % 3).astype(np.int32), ("a", "b", "c"))


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_example_exactly_once_with_padding_masked(shuffle):
    src, idx = _source(), np.array([3, 5, 7, 11, 13, 17, 19])
    rng = np.random.default_rng(0) if shuffle else None
    seen = []
    for b in pipeline.batches(src, idx, 4, rng=rng, extra={"flag": np.arange(7)}):
        chex.assert_shape(b["image"], (4, 4, 4, 1))
        assert b["mask"].dtype == bool
        seen += list(b["image"][b["mask"], 0, 0, 0])
        np.testing.assert_array_equal(idx[b["flag"]], b["image"][:, 0, 0, 0])  # extras stay aligned
        np.testing.assert_array_equal(b["label"], src.labels[b["image"][:, 0, 0, 0]])
    assert sorted(seen) == sorted(idx)
    assert pipeline.num_batches(7, 4) == 2


def test_shuffle_is_seeded():
    src, idx = _source(), np.arange(23)
    order = lambda s: [x for b in pipeline.batches(src, idx, 8, rng=np.random.default_rng(s))  # noqa: E731
                       for x in b["image"][b["mask"], 0, 0, 0]]
    assert order(1) == order(1) and order(1) != order(2)


def test_batches_are_sharded_over_the_data_axis():
    mesh = pipeline.make_mesh(8)
    b = next(iter(pipeline.prefetch(pipeline.batches(_source(), np.arange(23), 16), mesh)))
    assert b["image"].sharding.spec == jax.sharding.PartitionSpec("data")
    assert len(b["image"].addressable_shards) == 8
    chex.assert_shape(b["image"].addressable_shards[0].data, (2, 4, 4, 1))


def test_prefetch_yields_all_batches_in_order_and_reraises():
    mesh = pipeline.make_mesh(1)
    got = [int(b["image"][0, 0, 0, 0]) for b in pipeline.prefetch(pipeline.batches(_source(), np.arange(23), 5),
                                                                  mesh)]
    assert got == [0, 5, 10, 15, 20]

    def broken():
        yield next(pipeline.batches(_source(), np.arange(5), 5))
        raise RuntimeError("decode failed")

    with pytest.raises(RuntimeError, match="decode failed"):
        list(pipeline.prefetch(broken(), mesh))


def test_batch_size_must_divide_over_devices():
    with pytest.raises(ConfigError, match="multiple of the 8"):
        pipeline.check_batch_size(12, pipeline.make_mesh(8))
    pipeline.check_batch_size(16, pipeline.make_mesh(8))


def test_preprocess_normalises_and_resizes():
    x = jnp.full((2, 4, 4, 3), 255, jnp.uint8)
    out = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), image_size=8)(x)
    chex.assert_shape(out, (2, 8, 8, 3))
    np.testing.assert_allclose(out, 2.0, rtol=1e-6)


def test_augmentation_only_with_a_key_and_crop_keeps_content():
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (64, 6, 6, 1), dtype=np.uint8))
    prep = Preprocess((0.0,), (1.0,), augment="crop_flip", pad=2)
    np.testing.assert_allclose(prep(x), x / 255.0, rtol=1e-6)  # inference: no augmentation
    aug = prep(x, jax.random.key(0))
    assert not np.allclose(aug, x / 255.0)
    # A crop at offset (pad, pad) is the identity; every crop is a window of the zero-padded image.
    crops = random_crop(jax.random.key(1), x.astype(jnp.float32), 2)
    padded = np.pad(np.asarray(x, np.float32), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i in range(8):
        found = any(np.array_equal(crops[i], padded[i, a:a + 6, b:b + 6]) for a in range(5) for b in range(5))
        assert found
    with pytest.raises(ConfigError, match="unknown augmentation"):
        Preprocess((0.0,), (1.0,), augment="mixup")
