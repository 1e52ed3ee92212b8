"""CIFAR-100, ResNet-18 (CIFAR variant), 10% per-class forget set, alpha 2 (docs/definitions.md §3).

    python -m lotus_jax.main --config configs/cifar100.py --workdir runs/cifar100

Image folder instead of tfds: add `--config.data.source=folder --config.data.path=/path/to/tree`.
CPU-sized variant: `--config configs/cifar100.py:small`.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("cifar10_config", pathlib.Path(__file__).with_name("cifar10.py"))
_cifar10 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cifar10)


def get_config(variant: str = ""):
    c = _cifar10.get_config(variant, num_classes_name="cifar100", alpha=2.0)
    c.data.mean, c.data.std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    return c
