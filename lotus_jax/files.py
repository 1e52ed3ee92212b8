"""Workdir output: atomic writes by process 0 only, through `etils.epath` so that a workdir may be a local
folder or a bucket path (`gs://...`) as on TPU VMs; readers never see a half-written file."""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

import jax
import numpy as np
from etils import epath

PathLike = str | os.PathLike | epath.Path


def writes() -> bool:
    """Whether this process writes shared outputs (process 0 of a multi-host run; always on one host)."""
    return jax.process_index() == 0


def write_bytes(path: PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically (`write_bytes_here`); on processes other than 0 it does nothing."""
    if writes():
        write_bytes_here(path, data)


def write_bytes_here(path: PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically (a uniquely named temporary file in the same folder, then a rename)
    from whichever process calls it: for files each host keeps for itself, such as a decode cache."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_bytes(data)
    tmp.replace(path)


def write_text(path: PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: PathLike, obj: Any, **kwargs: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, **kwargs))


def write_npz(path: PathLike, compressed: bool = True, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    write_bytes(path, buf.getvalue())


def read_json(path: PathLike) -> Any:
    return json.loads(epath.Path(path).read_text())
