"""Toy stages for runner tests: a `Context` over a small in-memory source whose label of example i is i (so a
batch's labels say which examples it holds), a recorder of what steps see (through a host callback), and a
small regression problem with a real optimizer for checkpoint/resume tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import io_callback

from lotus_jax.data import make_mesh
from lotus_jax.data.sources import ArraySource, Dataset
from lotus_jax.data.splits import Splits
from lotus_jax.data.transforms import Preprocess
from lotus_jax.train.context import Context
from lotus_jax.train.losses import masked_mean
from lotus_jax.train.runner import Phase, Plan
from lotus_jax.train.state import TrainState, create_state


def toy_source(n: int = 48, seed: int = 0) -> ArraySource:
    """`n` random 1x1x3 uint8 images; label i for example i."""
    rng = np.random.default_rng(seed)
    return ArraySource(rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8), np.arange(n, dtype=np.int32),
                       tuple(str(i) for i in range(n)))


def toy_context(source=None, *, seed: int = 0, progress_dir: Path | None = None, log: Callable = lambda s: None,
                stop: threading.Event | None = None, cls: type[Context] = Context, **kw) -> Context:
    """A Context whose training source is `source` (default `toy_source()`); model and evaluation unused."""
    source = toy_source() if source is None else source
    n = len(source)
    splits = Splits(forget=np.arange(n // 4), retain=np.arange(n // 4, n), val=np.arange(0), test=np.arange(0))
    dataset = Dataset("toy", source, source, len(source.class_names))
    return cls(model=None, prep=Preprocess((0.5,), (0.5,)), dataset=dataset, splits=splits, mesh=make_mesh(1),
               eval_fn=None, init_fn=None, eval_batch_size=8, seed=seed, log=log, progress_dir=progress_dir,
               stop=stop or threading.Event(), data_threads=2, **kw)


class Recorder:
    """What recording steps saw, in step order: per step, the valid labels of each stream (and the key)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, np.ndarray]] = []

    def __call__(self, seen: dict) -> None:
        self.steps.append({k: np.asarray(v) for k, v in seen.items()})

    def labels(self, stream: str = "") -> list[np.ndarray]:
        return [s[stream] for s in self.steps]


def _valid_labels(batch: dict) -> dict:
    """{'' or stream name: labels with -1 at padded rows} of a batch or a paired batch."""
    streams = batch if "label" not in batch else {"": batch}
    return {k: jnp.where(b["mask"], b["label"], -1) for k, b in streams.items()}


def recording_step(recorder: Recorder, keyed: bool = False, metrics: Sequence[str] = ("loss",)) -> Callable:
    """A step that counts its calls and hands the batch's labels (and its key, when `keyed`) to `recorder`.

    Its metrics are the given names, each the number of valid rows of the (first) batch."""

    def step(state, batch, *args):
        seen = _valid_labels(batch)
        if keyed:
            seen["key"] = jax.random.key_data(args[-1])
        io_callback(recorder, None, seen, ordered=True)
        first = next(iter(_valid_labels(batch).values()))
        value = jnp.sum(first >= 0).astype(jnp.float32)
        return {"count": state["count"] + 1}, {m: value for m in metrics}

    return step


def counting_state() -> dict:
    return {"count": jnp.zeros((), jnp.int32)}


def recorded(recorder: Recorder, stream: str = "") -> list[np.ndarray]:
    """Valid labels per step of `stream` (padding dropped), after waiting for pending callbacks."""
    jax.effects_barrier()
    return [x[x >= 0] for x in recorder.labels(stream)]


# -- a small regression problem with Adam, for resume and NaN tests ----------------------------------------

class Linear(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(x)[:, 0]


def regression_state() -> TrainState:
    model = Linear()
    variables = model.init(jax.random.key(0), jnp.ones((1, 3)))
    return create_state(model, variables, optax.adam(0.1), make_mesh(1))


def regression_step(state: TrainState, batch: dict, key: jax.Array) -> tuple[TrainState, dict]:
    """Least squares of the pixel sum (plus noise from `key`, so keys matter); `target_shift` (an extra) is
    added to the target, so a NaN there poisons the loss of its batch."""
    x = batch["image"].reshape(batch["image"].shape[0], -1).astype(jnp.float32) / 255.0
    y = x.sum(1) + batch["target_shift"]

    def loss_fn(p):
        pred = state.apply_fn({"params": p}, x)
        noise = 0.01 * jax.random.normal(key, y.shape)
        return masked_mean((pred - y - noise) ** 2, batch["mask"])

    loss, g = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=g), {"loss": loss}


def whole_state(state: TrainState) -> dict:
    """Everything a resumed run must reproduce: parameters, optimizer state, step counter."""
    return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


def regression_plan(epochs: int = 3, batch_size: int = 8, n: int = 48, poison: dict[int, int] | None = None,
                    shuffle: bool = True) -> Plan:
    """`epochs` epochs of one keyed phase over all `n` examples; `poison={epoch: step}` puts a NaN target in
    that step (0-based epoch, 1-based step; only with shuffle=False, where step k holds positions of batch k)."""

    def phases(epoch: int, info: dict) -> list[Phase]:
        shift = np.zeros(n, np.float32)
        if poison and epoch in poison:
            shift[(poison[epoch] - 1) * batch_size] = np.nan
        return [Phase("fit", regression_step, np.arange(n), extra={"target_shift": shift}, keyed=True,
                      shuffle=shuffle)]

    return Plan(state=regression_state(), batch_size=batch_size, epochs=epochs, phases=phases, finish=whole_state)


class StopAfter(Context):
    """A Context that sets its stop flag when the runner takes the `after`-th training batch (counted over
    the whole stage, 1-based), so the stop lands after exactly that step."""

    def __init__(self, *args, after: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.after, self.taken = after, 0

    def batches(self, indices, batch_size, **kw):
        loader = super().batches(indices, batch_size, **kw)
        ctx = self

        class Counting:
            def __enter__(self):
                loader.__enter__()
                return self

            def __exit__(self, *exc):
                return loader.__exit__(*exc)

            def __iter__(self):
                for b in loader:
                    ctx.taken += 1
                    if ctx.taken == ctx.after:
                        ctx.stop.set()
                    yield b

        return Counting()
