"""On-device preprocessing inside the jitted steps: scale, resize, normalise, and train augmentation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lotus_jax.errors import ConfigError

AUGMENTATIONS = ("none", "crop_flip", "crop")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """uint8 NHWC -> normalised float32 at the model's resolution. Hashable, so it can be a static arg.

    `augment` is applied only when a step asks for it (training of original/gold models): `crop_flip` is
    the CIFAR recipe (random crop with 4-pixel zero padding + horizontal flip), `crop` omits the flip
    (digits, text-like data).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int | None = None
    augment: str = "none"
    pad: int = 4

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation {self.augment!r}; valid: {', '.join(AUGMENTATIONS)}")

    def augment_images(self, images: jax.Array, key: jax.Array) -> jax.Array:
        """The training augmentation alone, in the images' own dtype (zero padding is black either way)."""
        if self.augment == "none":
            return images
        x = random_crop(key, images, self.pad)
        return random_flip(jax.random.fold_in(key, 1), x) if self.augment == "crop_flip" else x

    def __call__(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
        x = images.astype(jnp.float32) / 255.0
        if key is not None:
            x = self.augment_images(x, key)
        if self.image_size is not None and x.shape[1:3] != (self.image_size, self.image_size):
            x = jax.image.resize(x, (x.shape[0], self.image_size, self.image_size, x.shape[3]), "bilinear")
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)


def random_crop(key: jax.Array, x: jax.Array, pad: int) -> jax.Array:
    """Pads each image by `pad` zeros and crops back to the original size at a random offset."""
    n, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * pad + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, x.shape[3]))  # noqa: E731
    return jax.vmap(crop)(xp, offsets)


def random_flip(key: jax.Array, x: jax.Array) -> jax.Array:
    """Flips each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
    return jnp.where(flip, x[:, :, ::-1, :], x)


def preprocess_from_config(data_cfg, model_cfg) -> Preprocess:
    return Preprocess(tuple(data_cfg.mean), tuple(data_cfg.std), model_cfg.get("image_size"),
                      data_cfg.get("augment", "none"))
