"""Data: sources -> splits -> batches on the mesh."""

from lotus_jax.data.pipeline import batches, make_mesh, num_batches, prefetch, to_device
from lotus_jax.data.sources import Dataset, DataError, load_dataset
from lotus_jax.data.splits import Splits, load_or_make_splits, make_splits, split_settings
from lotus_jax.data.transforms import Preprocess, preprocess_from_config

__all__ = ["batches", "make_mesh", "num_batches", "prefetch", "to_device", "Dataset", "DataError",
           "load_dataset", "Splits", "load_or_make_splits", "make_splits", "split_settings", "Preprocess",
           "preprocess_from_config"]
