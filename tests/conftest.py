"""Test session set-up: 8 fake CPU devices so sharding tests can compare meshes with one device; the
`register_method` fixture (a throwaway method in `lotus_jax.methods.REGISTRY` for one test)."""
import os

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture
def register_method():
    """`register_method(name, module)` adds a method module to `lotus_jax.methods.REGISTRY` for one test."""
    from lotus_jax import methods

    added = []

    def register(name, module):
        methods.REGISTRY.register(name, module)
        added.append(name)
        return module

    yield register
    for name in added:
        methods.REGISTRY.unregister(name)
