"""Batches on the mesh (sharding, batch sizes that fit the devices) and on-device preprocessing; the epoch
loader itself is tested in test_loader.py."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lotus_jax.data import pipeline
from lotus_jax.data.loader import EpochLoader
from lotus_jax.data.sources import ArraySource
from lotus_jax.data.transforms import Preprocess, random_crop
from lotus_jax.errors import ConfigError


def _source(n=23):
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
    return ArraySource(images, (np.arange(n) % 3).astype(np.int32), ("a", "b", "c"))


def test_batches_are_sharded_over_the_data_axis():
    mesh = pipeline.make_mesh(8)
    with EpochLoader(_source(), np.arange(23), 16, mesh) as it:
        b = next(it)
    assert b["image"].sharding.spec == jax.sharding.PartitionSpec("data")
    assert len(b["image"].addressable_shards) == 8
    chex.assert_shape(b["image"].addressable_shards[0].data, (2, 4, 4, 1))


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


def test_augmenting_uint8_images_first_equals_augmenting_inside_preprocess():
    # Unlearning through the training transform augments the uint8 batch before the step (runner); that must
    # be the same as the augmentation original/gold training gets inside `prep(x, key)`. Catches a crop that
    # pads with anything but black, or a flip drawn from another key.
    x = jnp.asarray(np.random.default_rng(1).integers(0, 256, (16, 6, 6, 3), dtype=np.uint8))
    prep = Preprocess((0.5, 0.4, 0.3), (0.2, 0.2, 0.2), augment="crop_flip", pad=2)
    key = jax.random.key(3)
    np.testing.assert_array_equal(prep(prep.augment_images(x, key)), prep(x, key))
    assert prep.augment_images(x, key).dtype == jnp.uint8
    np.testing.assert_array_equal(Preprocess((0.0,), (1.0,)).augment_images(x, key), x)  # augment="none"
