"""Test session set-up: 8 fake CPU devices so sharding tests can compare meshes with one device; a
persistent XLA compilation cache per test process (many tests compile the same tiny programs: each is
compiled once); as many pytest-xdist workers as cores, at most 4 (each holds up to 3 GB); the
`register_method` fixture (a throwaway method in `lotus_jax.methods.REGISTRY` for one test)."""
import os
import shutil
import tempfile

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Environment, not jax.config: the runs the tests start as subprocesses share the cache too.
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="lotus_jax_test_xla_cache_")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILATION_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"


# Files that run whole jobs (main.run, subprocesses), longest first. They are scheduled before the others, so
# that on parallel workers a long file does not start last and leave the other workers idle.
END_TO_END_FILES = ("test_main.py", "train/test_exact_members.py", "test_configs.py", "test_reliability.py",
                    "test_audit_stage.py", "test_adding_a_method.py", "train/test_runner.py",
                    "data/test_imagenet_input.py", "test_multihost.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.path.as_posix()
        return next((i for i, f in enumerate(END_TO_END_FILES) if path.endswith("/tests/" + f)), len(END_TO_END_FILES))

    items.sort(key=rank)  # stable: tests keep their order within a file


def pytest_xdist_auto_num_workers(config):
    return max(1, min(os.cpu_count() or 1, 4))


def pytest_unconfigure(config):
    shutil.rmtree(_COMPILATION_CACHE, ignore_errors=True)


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
