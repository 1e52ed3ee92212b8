"""Random-access image sources: uint8 NHWC images and int labels, read by index.

Every source exposes the same small interface (`Source`): `labels`, `class_names`, `image_shape`, `len()`,
`get(indices) -> uint8 (n, H, W, C)`, `get_one(index) -> uint8 (H, W, C)` (one example, what the epoch
loader reads on its threads) and `describe(index)` (the file or record behind an example, for error
messages). An example that cannot be decoded raises `CorruptExample`, a one-line `DataError` naming it.
A `Dataset` pairs the training source (what `f_orig` saw: `D_f ∪ D_r`) with the held-out source (split
later into val = `D_u` and test). A held-out source read from two folders (`data.test_split`: a val folder and
a test folder, as MUFAC ships them) is their concatenation, val first; its `labels` (`HeldoutLabels`) carry
where val ends, so the split keeps the two folders apart instead of halving the held-out examples per class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lotus_jax.errors import ConfigError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataError(ConfigError):
    """A dataset that cannot be read as configured; the message says what to do."""


class CorruptExample(DataError):
    """One example whose image cannot be decoded (damaged or cut-short file or record).

    Unlike other `DataError`s it concerns a single example, so the epoch loader can turn it into a masked
    row instead (`skip_corrupt`). `what` names the file or record, `reason` says what is wrong with it.
    """

    def __init__(self, what: str, reason: str):
        self.what, self.reason = what, reason
        super().__init__(f"cannot decode {what} ({reason}): remove or replace it, "
                         f"or set --config.data.skip_corrupt=True")

    def __reduce__(self):
        return CorruptExample, (self.what, self.reason)

    @property
    def description(self) -> str:
        """`what (reason)`: the entry the loader keeps for a skipped example."""
        return f"{self.what} ({self.reason})"


class Source(Protocol):
    labels: np.ndarray
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def get(self, indices: np.ndarray) -> np.ndarray: ...

    def get_one(self, index: int) -> np.ndarray: ...

    def describe(self, index: int) -> str: ...


def read_one(source: Source, index: int) -> np.ndarray:
    """Example `index` of `source` as uint8 (H, W, C), by `get_one` (or `get` for a source without it)."""
    get_one = getattr(source, "get_one", None)
    return get_one(index) if get_one is not None else source.get(np.array([index]))[0]


def in_memory(source: Source, indices: np.ndarray | None = None) -> bool:
    """Whether the examples `indices` of `source` (default: all) are decoded images held in memory: an
    `ArraySource` (or a subset of one), or a source with `covers(indices)` (a cache) that holds them all."""
    while isinstance(source, SubsetSource):
        indices = source.indices if indices is None else source.indices[np.asarray(indices)]
        source = source.base
    covers = getattr(source, "covers", None)
    if covers is not None:
        return bool(covers(np.arange(len(source)) if indices is None else np.asarray(indices)))
    return isinstance(source, ArraySource)


def describe(source: Source, index: int) -> str:
    """What example `index` of `source` is (file path, record number), for error messages."""
    fn = getattr(source, "describe", None)
    return fn(index) if fn is not None else f"example {index}"


def _decode_errors() -> tuple[type[BaseException], ...]:
    """What Pillow raises for a damaged, truncated or unsupported image (not for a bug in our code)."""
    from PIL import Image

    return OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError


def _reason(e: BaseException) -> str:
    """A short, stable reason for a decode failure: 'truncated', 'not an image', or Pillow's first line."""
    from PIL import UnidentifiedImageError

    msg = (str(e).splitlines() or [""])[0].strip()
    if "truncated" in msg.lower():
        return "truncated"
    if isinstance(e, UnidentifiedImageError):
        return "not an image Pillow can read"
    return (msg or type(e).__name__)[:120]


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """A source held in memory: `images` uint8 (N, H, W, C), `labels` int32 (N,).

    `names` (optional) says where each example came from (e.g. the file path), for `describe`. `damaged`
    maps the index of an example that could not be decoded when the source was built to the reason; its
    row of `images` is zeros and reading it raises `CorruptExample`, so the error (or the skip) happens
    where the example is used, like for sources that decode on demand.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    names: tuple[str, ...] | None = None
    damaged: Mapping[int, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")
        if self.names is not None and len(self.names) != len(self.labels):
            raise DataError(f"{len(self.names)} names but {len(self.labels)} labels")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices)
        if self.damaged:
            bad = np.flatnonzero(np.isin(indices, np.fromiter(self.damaged, np.int64)))
            if len(bad):
                self.get_one(int(indices.flat[bad[0]]))
        return self.images[indices]

    def get_one(self, index: int) -> np.ndarray:
        if index in self.damaged:
            raise CorruptExample(self.describe(index), self.damaged[index])
        return self.images[index]

    def describe(self, index: int) -> str:
        return self.names[index] if self.names is not None else f"example {index}"


@dataclasses.dataclass(frozen=True)
class LazySource:
    """A source that keeps images encoded until an example is read.

    `fetch(indices)` reads encoded records (several at once, so the storage layer can read in parallel)
    and `decode(record) -> uint8 (H, W, C)` turns one into pixels. `get_one` reads and decodes one
    example in the calling thread: the epoch loader calls it on grain's threads. `get` (a whole batch, for
    other callers) decodes on `decode_workers` threads of its own (1 = in the calling thread); Pillow
    releases the GIL while it decodes and resizes, so threads scale with cores. The result is the same, in
    the same order, for any worker count. `name` (e.g. the split) prefixes `describe`: '<name> record <i>'.
    """

    fetch: Callable[[np.ndarray], Sequence[Any]]
    decode: Callable[[Any], np.ndarray]
    labels: np.ndarray
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    decode_workers: int = 1
    name: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, index: int) -> str:
        return f"{self.name} record {index}" if self.name else f"example {index}"

    def get_one(self, index: int) -> np.ndarray:
        return self._decode(int(index), self.fetch(np.array([index]))[0])

    def _decode(self, index: int, record: Any) -> np.ndarray:
        """`decode(record)`, a damaged image raised as `CorruptExample`, a wrong size as `DataError`."""
        try:
            img = self.decode(record)
        except _decode_errors() as e:
            raise CorruptExample(self.describe(index), _reason(e)) from e
        if img.shape != self.image_shape:
            raise DataError(f"{self.describe(index)} decodes to {img.shape}, not {self.image_shape}; set "
                            f"--config.data.crop=center|resize so that every image gets one size")
        return img

    def get(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices)
        records = self.fetch(indices)
        out = np.empty((len(indices), *self.image_shape), np.uint8)

        def put(j: int) -> None:
            out[j] = self._decode(int(indices[j]), records[j])

        if self.decode_workers > 1 and len(indices) > 1:
            with ThreadPoolExecutor(self.decode_workers, thread_name_prefix="lotus_jax-decode") as pool:
                list(pool.map(put, range(len(indices))))
        else:
            for j in range(len(indices)):
                put(j)
        return out


class HeldoutLabels(np.ndarray):
    """The labels of a held-out source made of a val part followed by a test part (`data.test_split`).

    `val_size` is the number of leading examples that come from the val folder. Only the source's own labels
    array carries it: anything derived from it (a slice, a comparison, a subset's labels) has `val_size`
    None, so a boundary can never be applied to the wrong examples. Use `heldout_labels` to make one and
    `heldout_val_size` to read it.
    """

    val_size: int | None = None

    def __array_finalize__(self, obj: Any) -> None:
        self.val_size = None

    def __getitem__(self, key: Any) -> Any:
        out = super().__getitem__(key)  # rows of a batch, a subset: plain arrays
        return out.view(np.ndarray) if isinstance(out, np.ndarray) else out


def heldout_labels(labels: np.ndarray, val_size: int) -> HeldoutLabels:
    """`labels` (int) whose first `val_size` examples are val and the rest test."""
    out = np.asarray(labels).view(HeldoutLabels)
    out.val_size = int(val_size)
    return out


def heldout_val_size(labels: Any) -> int | None:
    """How many leading held-out examples form the val split when the source has separate val and test parts;
    None when the held-out examples are to be split per class."""
    return labels.val_size if isinstance(labels, HeldoutLabels) else None


def concat_val_test(val: ArraySource, test: ArraySource) -> ArraySource:
    """One held-out source from a val and a test source (val first); its labels remember where val ends."""
    if val.image_shape != test.image_shape:
        raise DataError(f"val images are {val.image_shape} but test images {test.image_shape}; set "
                        f"--config.data.crop=center|resize (or --config.data.image_size=N)")
    names = None if val.names is None or test.names is None else val.names + test.names
    damaged = {**val.damaged, **{len(val) + i: why for i, why in test.damaged.items()}}
    return ArraySource(np.concatenate([val.images, test.images]),
                       heldout_labels(np.concatenate([val.labels, test.labels]), len(val)),
                       val.class_names, names, damaged)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Training source (`D`) and held-out source (split into val and test), with the class count.

    The held-out source is split per class into val and test (`splits.split_heldout`), unless its labels are
    `HeldoutLabels` with a `val_size`: then its first `val_size` examples are val and the rest test.
    """

    name: str
    train: Source
    heldout: Source
    num_classes: int


def digits_dataset(heldout_fraction: float = 0.3) -> Dataset:
    """scikit-learn's bundled 8×8 digits (1,797 images, 10 classes), no download needed.

    Pixel values 0..16 are scaled to 0..255 uint8, one channel. The train/held-out partition is fixed
    (stratified, seed 0) so that it plays the role of an official split; the run's seed then splits
    train into forget/retain and held-out into val/test.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int32)
    rng = np.random.default_rng(0)
    heldout = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        heldout[idx[: int(round(len(idx) * heldout_fraction))]] = True
    names = tuple(str(c) for c in range(10))
    return Dataset(
        name="digits",
        train=ArraySource(images[~heldout], labels[~heldout], names),
        heldout=ArraySource(images[heldout], labels[heldout], names),
        num_classes=10,
    )


CROP_MODES = ("none", "resize", "center")
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclasses.dataclass(frozen=True)
class ResizeCrop:
    """Host-side resizing of a decoded image, with Pillow's antialiased filters (what torchvision does to
    the PIL images its ImageNet transforms receive).

    `center`: the shorter side becomes `resize_size` (longer side `int(resize_size * long / short)`, aspect
    kept), then the central `crop_size` square is cut out, its offset `round((size - crop_size) / 2)`:
    torchvision's `Resize(resize_size)` + `CenterCrop(crop_size)`, the eval transform of its ViT-B/16 and
    ResNet weights (256 -> 224). `resize`: straight to `crop_size` x `crop_size`, aspect not kept, as the
    vision_transformer / Hugging Face ViT weights expect. `none`: unchanged.
    """

    mode: str = "none"
    resize_size: int | None = None
    crop_size: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.mode not in CROP_MODES:
            raise DataError(f"unknown data.crop {self.mode!r}; valid: {', '.join(CROP_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(f"unknown data.interpolation {self.interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
        if self.mode != "none" and not (self.crop_size and self.crop_size > 0):
            raise DataError(f"data.crop={self.mode} needs a positive --config.data.crop_size")
        if self.mode == "center" and not (self.resize_size and self.resize_size >= self.crop_size):
            raise DataError(f"data.crop=center needs --config.data.resize_size >= data.crop_size "
                            f"({self.resize_size} < {self.crop_size})")

    def __call__(self, img: PILImage) -> PILImage:
        from PIL import Image

        resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[self.interpolation]
        if self.mode == "resize" and img.size != (self.crop_size, self.crop_size):
            return img.resize((self.crop_size, self.crop_size), resample)
        if self.mode != "center":
            return img
        w, h = img.size
        short, long = min(w, h), max(w, h)
        new_long = int(self.resize_size * long / short)
        size = (self.resize_size, new_long) if w <= h else (new_long, self.resize_size)
        if size != (w, h):
            img = img.resize(size, resample)
        left = round((size[0] - self.crop_size) / 2.0)
        top = round((size[1] - self.crop_size) / 2.0)
        return img.crop((left, top, left + self.crop_size, top + self.crop_size))


def resize_crop_from_config(data_cfg) -> ResizeCrop | None:
    """The host-side resize of `data.crop` / `resize_size` / `crop_size` / `interpolation`, or the legacy
    `data.image_size` (bilinear resize to a square); None when images keep their decoded size."""
    mode, image_size = data_cfg.get("crop", "none"), data_cfg.get("image_size")
    if image_size and mode != "none":
        raise DataError(f"data.image_size and data.crop={mode} both resize; set data.crop_size instead")
    if image_size:
        return ResizeCrop("resize", crop_size=int(image_size))
    rc = ResizeCrop(mode, data_cfg.get("resize_size"), data_cfg.get("crop_size"),
                    data_cfg.get("interpolation", "bilinear"))
    return None if mode == "none" else rc


def available_cores() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_workers_from_config(data_cfg) -> int:
    """`data.decode_workers`, with -1 meaning the CPU cores this process may use."""
    n = int(data_cfg.get("decode_workers", 1))
    if n == -1:
        return available_cores()
    if n < 1:
        raise DataError(f"data.decode_workers={n}; use a positive thread count or -1 (all CPU cores)")
    return n


def _decode_image(data: bytes | str | os.PathLike, channels: int | None, resize: ResizeCrop | None) -> np.ndarray:
    """Pillow decode, channel conversion (as torchvision's loader: to RGB first), then `resize`."""
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        if channels == 1:
            img = img.convert("L")
        elif channels == 3 or img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        if resize is not None:
            img = resize(img)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _in_split(name: str, split: str) -> bool:
    """Whether archive member or relative path `name` is an image `split/<class>/<file>`."""
    parts = Path(name).parts
    return len(parts) >= 3 and parts[-3] == split and name.lower().endswith(IMAGE_SUFFIXES)


def _split_files(entries: Sequence[str], split: str) -> dict[str, list[str]]:
    """Groups `split/class/file` paths by class for one split."""
    by_class: dict[str, list[str]] = {}
    for name in entries:
        if _in_split(name, split):
            by_class.setdefault(Path(name).parts[-2], []).append(name)
    return by_class


def _folder_arrays(
    files_by_class: dict[str, list[str]], class_names: Sequence[str], read: Callable[[str], bytes | str],
    channels: int | None, resize: ResizeCrop | None, where: str,
) -> ArraySource:
    """Decodes every image of one split into memory. An image that cannot be decoded does not stop the
    load: it is recorded in the source's `damaged` (a zero image), and reading it raises `CorruptExample`
    naming the file, or the loader skips it with `skip_corrupt`."""
    images: list[np.ndarray | None] = []
    labels, names, damaged = [], [], {}
    for label, name in enumerate(class_names):
        for f in sorted(files_by_class.get(name, [])):
            try:
                images.append(_decode_image(read(f), channels, resize))
            except _decode_errors() as e:
                damaged[len(images)] = _reason(e)
                images.append(None)
            labels.append(label)
            names.append(f)
    shapes = {im.shape for im in images if im is not None}
    if not shapes:
        first = next(iter(damaged))
        raise DataError(f"none of the {len(images)} images in {where} can be decoded (e.g. {names[first]}: "
                        f"{damaged[first]}); check --config.data.path")
    if len(shapes) > 1:
        example = {}  # shape -> the first file that has it
        for im, f in zip(images, names):
            if im is not None:
                example.setdefault(im.shape, f)
        seen = ", ".join(f"{shape} ({file})" for shape, file in sorted(example.items())[:3])
        if len({shape[-1] for shape in shapes}) > 1:
            raise DataError(f"images have different numbers of channels: {seen}; set --config.data.channels=3 "
                            f"(RGB) or 1 (grayscale)")
        raise DataError(f"images have different sizes: {seen}; set --config.data.crop=center|resize "
                        f"(or --config.data.image_size=N)")
    blank = np.zeros(shapes.pop(), np.uint8)
    return ArraySource(np.stack([blank if im is None else im for im in images]), np.asarray(labels, np.int32),
                       tuple(class_names), tuple(names), damaged)


def _read_archive(path: Path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """The bytes of every `wanted` file member of a .tar / .tar.gz, in one pass in archive order (seeking
    back in a .tar.gz decompresses it again from the start).

    An archive that is cut short or damaged raises a one-line `DataError` naming the member where reading
    stopped: what lies beyond is unknown, so no example can be trusted to be the last one.
    """
    data: dict[str, bytes] = {}
    reading, last = None, None
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and wanted(member.name):
                    reading = member.name
                    data[member.name] = tar.extractfile(member).read()
                reading, last = None, member.name
    except (EOFError, OSError, tarfile.TarError, zlib.error) as e:
        where = (f"inside {reading}" if reading else f"after {last}" if last else "at its start")
        reason = (str(e).splitlines() or [""])[0] or type(e).__name__
        raise DataError(f"cannot read {path}: the archive is cut short or damaged {where} ({reason}); "
                        f"download or create it again") from None
    return data


def folder_dataset(
    path: str, train_split: str = "train", heldout_split: str = "test",
    channels: int | None = None, image_size: int | None = None, resize: ResizeCrop | None = None,
    test_split: str | None = None,
) -> Dataset:
    """An image-folder tree `split/class/*.jpg|png`, as a directory or a .tar / .tar.gz archive of one.

    Classes are the sorted folder names of the training split (index = position), as torchvision's
    ImageFolder does; inside a class, files are in sorted name order. All images are decoded into memory
    once, resized by `resize` (or squashed to `image_size` x `image_size` when only that is given).
    `describe(i)` is the image's path in the tree (its member name in an archive). A damaged image is kept
    as a `CorruptExample` raised when it is read (see `_folder_arrays`); a cut-short archive stops the load
    with a one-line `DataError`.

    The held-out source is the `heldout_split` folder; with `test_split` it is the `heldout_split` folder
    (val) followed by the `test_split` folder (test), and its labels say where val ends (`HeldoutLabels`).
    """
    if resize is None and image_size:
        resize = ResizeCrop("resize", crop_size=image_size)
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"dataset path {str(p)!r} does not exist; set --config.data.path to an image-folder "
                        f"tree {train_split}/<class>/*.jpg (or a .tar.gz of one)")
    if p.is_dir():
        root = p
        if not (root / train_split).is_dir():
            subdirs = [d for d in root.iterdir() if (d / train_split).is_dir()]
            if len(subdirs) == 1:
                root = subdirs[0]
        entries = [str(f.relative_to(root)) for f in root.rglob("*") if f.is_file()]
        read = lambda rel: str(root / rel)  # noqa: E731
        sources = _folder_sources(entries, read, train_split, heldout_split, channels, resize, str(p), test_split)
        return Dataset(p.name, *sources, num_classes=len(sources[0].class_names))
    splits = [s for s in (train_split, heldout_split, test_split) if s]
    members = _read_archive(p, lambda n: any(_in_split(n, s) for s in splits))
    sources = _folder_sources(list(members), members.pop, train_split, heldout_split, channels, resize,
                              str(p), test_split)
    name = p.name.split(".")[0]
    return Dataset(name, *sources, num_classes=len(sources[0].class_names))


def _folder_sources(entries, read, train_split, heldout_split, channels, resize, where, test_split=None):
    """(train, held-out) sources of a folder tree; the held-out one is val + test when `test_split` is set."""
    train_files = _split_files(entries, train_split)
    if not train_files:
        raise DataError(f"no images under {train_split}/<class>/ in {where}; expected an image-folder tree")
    class_names = sorted(train_files)
    parts = []
    for key, split in (("heldout_split", heldout_split), ("test_split", test_split)):
        if not split:
            continue
        files = _split_files(entries, split)
        if not files:
            raise DataError(f"no images under {split}/<class>/ in {where}; set --config.data.{key}")
        unknown = sorted(set(files) - set(class_names))
        if unknown:
            raise DataError(f"{split} classes {unknown[:5]} do not occur in the training split of {where}")
        parts.append(_folder_arrays(files, class_names, read, channels, resize, where))
    train = _folder_arrays(train_files, class_names, read, channels, resize, where)
    return train, (parts[0] if len(parts) == 1 else concat_val_test(*parts))


TFDS_PREPARE_HINT = {
    "imagenet2012": (
        "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org into a folder M, "
        "then run `pip install 'lotus_jax[prepare]' && tfds build imagenet2012 --manual_dir M "
        "--file_format array_record --data_dir D` and pass --config.data.data_dir=D"
    ),
}


def tfds_dataset(
    name: str, data_dir: str | None = None, train_split: str = "train", heldout_split: str = "test",
    image_size: int | None = None, image_key: str = "image", label_key: str = "label",
    resize: ResizeCrop | None = None, decode_workers: int = 1, channels: int | None = None,
    label_cache: bool = True,
) -> Dataset:
    """A tensorflow-datasets dataset prepared in array_record format, read with `tfds.data_source`.

    Never downloads: a dataset that is not prepared in `data_dir` raises a one-line `DataError` that says
    how to prepare it. Images stay encoded until a batch asks for them; then the batch's records are read
    together and decoded with Pillow on `decode_workers` threads, converted to the feature's channel count
    (3 for ImageNet, whose few greyscale/CMYK JPEGs become RGB) and resized by `resize` (or squashed to
    `image_size`). TensorFlow is not needed at read time. Labels are read once per split (the records are
    parsed, the images not decoded) and cached next to the prepared files when that folder is writable.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for an unknown name
        raise DataError(f"unknown tfds dataset {name!r} ({type(e).__name__}); check --config.data.name") from None
    if not builder.is_prepared():
        hint = TFDS_PREPARE_HINT.get(name, f"run `tfds build {name} --file_format array_record --data_dir D` "
                                           f"on a machine with internet and pass --config.data.data_dir=D")
        raise DataError(f"tfds dataset {name!r} is not prepared in {builder.data_dir!r}: {hint}")
    label_feature = builder.info.features[label_key]
    class_names = tuple(label_feature.names) if hasattr(label_feature, "names") else tuple(
        str(i) for i in range(label_feature.num_classes))
    if resize is None and image_size:
        resize = ResizeCrop("resize", crop_size=image_size)
    if channels is None:
        shape = getattr(builder.info.features[image_key], "shape", None)
        channels = shape[-1] if shape else None

    def decode(record: bytes) -> np.ndarray:
        return _decode_image(record, channels, resize)

    def source(split: str) -> Source:
        try:
            ds = tfds.data_source(name, split=split, data_dir=data_dir,
                                  decoders={image_key: tfds.decode.SkipDecoding()})
        except Exception as e:
            raise DataError(f"cannot read split {split!r} of tfds dataset {name!r}: {e}".splitlines()[0]) from None

        def fetch(indices: np.ndarray) -> list[bytes]:
            return [r[image_key] for r in ds.__getitems__([int(i) for i in indices])]

        labels = _tfds_labels(ds, label_key, Path(builder.data_dir), split, use_cache=label_cache)
        return LazySource(fetch, decode, labels, class_names, _first_shape(fetch, decode, len(labels), split),
                          decode_workers, name=split)

    return Dataset(name, source(train_split), source(heldout_split), num_classes=len(class_names))


def _first_shape(fetch: Callable[[np.ndarray], Sequence[Any]], decode: Callable[[Any], np.ndarray], n: int,
                 split: str, tries: int = 16) -> tuple[int, int, int]:
    """The decoded shape of the first record of `split` that decodes (a damaged record 0 is not fatal)."""
    error = None
    for i in range(min(n, tries)):
        try:
            return decode(fetch(np.array([i]))[0]).shape
        except _decode_errors() as e:
            error = error or CorruptExample(f"{split} record {i}", _reason(e))
    raise error or DataError(f"split {split!r} has no records")


def _tfds_labels(ds, label_key: str, dataset_dir: Path, split: str, chunk: int = 4096, use_cache: bool = True
                 ) -> np.ndarray:
    """All labels of a split, read in chunks of records (array_record reads a chunk's shards in parallel).

    For ImageNet this reads the whole split once (~140 GB for train), so the result is kept in
    `dataset_dir/lotus_jax_labels/` when writable, under a name that changes with the split, the label key
    and the preparation (time stamp of `dataset_info.json`, rewritten by every `tfds build`).
    `use_cache=False` (`--config.data.label_cache=False`) neither reads nor writes that file.
    """
    n = len(ds)
    try:
        prepared = (dataset_dir / "dataset_info.json").stat().st_mtime_ns
    except OSError:
        prepared = 0
    key = hashlib.sha1(f"{split}|{label_key}|{n}|{prepared}".encode()).hexdigest()[:16]
    cache = dataset_dir / "lotus_jax_labels" / f"{key}.npy"
    if use_cache:
        try:
            labels = np.load(cache)
            if labels.shape == (n,):
                return labels
        except (OSError, ValueError):
            pass
    labels = np.empty(n, np.int32)
    for start in range(0, n, chunk):
        keys = list(range(start, min(n, start + chunk)))
        labels[start:start + len(keys)] = [int(r[label_key]) for r in ds.__getitems__(keys)]
    if not use_cache:
        return labels
    tmp = None
    try:
        cache.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".npy", dir=cache.parent)  # unique name: hosts may share the folder
        with os.fdopen(fd, "wb") as f:
            np.save(f, labels)
        os.replace(tmp, cache)
    except OSError:  # read-only or full: run without the cache
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return labels


class WrapsSource:
    """Class names and image shape of the source a wrapper reads from (its `base`)."""

    base: Source

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.base.class_names

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.base.image_shape


@dataclasses.dataclass(frozen=True)
class SubsetSource(WrapsSource):
    """The examples `indices` of another source, re-indexed from 0."""

    base: Source
    indices: np.ndarray
    val_size: int | None = None  # the subset's first `val_size` examples are val (see `HeldoutLabels`)

    @property
    def labels(self) -> np.ndarray:
        labels = np.asarray(self.base.labels)[self.indices]
        return labels if self.val_size is None else heldout_labels(labels, self.val_size)

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, indices: np.ndarray) -> np.ndarray:
        return self.base.get(self.indices[np.asarray(indices)])

    def get_one(self, index: int) -> np.ndarray:
        return read_one(self.base, int(self.indices[index]))

    def describe(self, index: int) -> str:
        return describe(self.base, int(self.indices[index]))


def per_class_subset(source: Source, per_class: int) -> Source:
    """The first `per_class` examples of each class (in source order): a fixed, smaller version of a dataset
    for CPU-sized experiments. The run's seed still decides the forget set inside it. A held-out source with
    separate val and test parts (`HeldoutLabels`) keeps the first `per_class` of each class in each part."""
    labels, val_size = np.asarray(source.labels), heldout_val_size(source.labels)
    bounds = [(0, len(labels))] if val_size is None else [(0, val_size), (val_size, len(labels))]
    parts = [lo + np.concatenate([np.flatnonzero(labels[lo:hi] == c)[:per_class] for c in np.unique(labels[lo:hi])])
             for lo, hi in bounds]
    if val_size is None:
        return SubsetSource(source, np.sort(parts[0]))
    return SubsetSource(source, np.concatenate([np.sort(p) for p in parts]), val_size=len(parts[0]))


def load_dataset(data_cfg) -> Dataset:
    """Builds the dataset named by `data_cfg.source` ('digits' | 'folder' | 'tfds'), optionally reduced to
    `data_cfg.train_per_class` / `heldout_per_class` examples per class."""
    ds = _load_full(data_cfg)
    if data_cfg.get("test_split") and heldout_val_size(ds.heldout.labels) is None:
        raise DataError(f"data.test_split (a separate test folder) is read by data.source=folder only, not "
                        f"data.source={data_cfg.source}; unset it")
    train_k, heldout_k = data_cfg.get("train_per_class"), data_cfg.get("heldout_per_class")
    if train_k or heldout_k:
        ds = Dataset(ds.name, per_class_subset(ds.train, train_k) if train_k else ds.train,
                     per_class_subset(ds.heldout, heldout_k) if heldout_k else ds.heldout, ds.num_classes)
    return ds


def _load_full(data_cfg) -> Dataset:
    return SOURCES.get(data_cfg.source)(data_cfg)


# -- data sources by `data.source` --------------------------------------------------------------------------

from lotus_jax.registry import Registry  # noqa: E402  (kept with the table it serves)


def _digits_from_config(data_cfg) -> Dataset:
    return digits_dataset()


def _folder_from_config(data_cfg) -> Dataset:
    if not data_cfg.get("path"):
        raise DataError("data.source=folder needs --config.data.path=<image-folder tree or .tar.gz>")
    return folder_dataset(data_cfg.path, data_cfg.get("train_split", "train"),
                          data_cfg.get("heldout_split", "test"), data_cfg.get("channels"),
                          resize=resize_crop_from_config(data_cfg), test_split=data_cfg.get("test_split"))


def _tfds_from_config(data_cfg) -> Dataset:
    return tfds_dataset(data_cfg.name, data_cfg.get("data_dir"), data_cfg.get("train_split", "train"),
                        data_cfg.get("heldout_split", "test"), resize=resize_crop_from_config(data_cfg),
                        decode_workers=decode_workers_from_config(data_cfg),
                        channels=data_cfg.get("channels"), label_cache=bool(data_cfg.get("label_cache", True)))


SOURCES: Registry[Callable[[Any], Dataset]] = Registry("data.source", DataError)
SOURCES.register("digits", _digits_from_config)
SOURCES.register("folder", _folder_from_config)
SOURCES.register("tfds", _tfds_from_config)
