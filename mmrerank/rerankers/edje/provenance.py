"""Provenance of a token store: digests of the model weights and of the images that produced it, so a store is
never reused for other inputs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

_CHUNK = 8 << 20  # bytes per read when hashing files


def state_digest(state: Mapping[str, Tensor]) -> str:
    """sha256 over a state dict: each tensor's name, dtype, shape and raw bytes, in sorted key order.

    Args:
        state: e.g. `model.state_dict()` (tensors on any device; each is copied to the CPU in turn).
    """
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # raw bytes, whatever the dtype (bf16 included)
    return h.hexdigest()


def images_digest(images: Any) -> str:
    """sha256 of a corpus's image ids and of what its images are read from.

    `ImageArray`: the pixel array's shape and bytes. `ImageFiles`: each file's resolved path, size and mtime (the
    files are not read: a corpus can be large; an image replaced in place gets a new mtime), or for an image held
    in memory its name and the sha256 of its bytes. Anything else with `ids` and `images[i]`: each decoded image's
    size, mode and pixels.
    """
    from mmrerank.core.items import ImageArray, ImageFiles

    h = hashlib.sha256(json.dumps(["ids", list(images.ids)]).encode())
    if isinstance(images, ImageArray):
        pixels = images.pixels
        h.update(json.dumps(["pixels", str(pixels.dtype), list(pixels.shape)]).encode())
        block = max(1, _CHUNK // max(1, pixels[0].nbytes if len(pixels) else 1))
        for s in range(0, len(pixels), block):  # in blocks: the array may be a memory map larger than memory
            h.update(np.ascontiguousarray(pixels[s:s + block]))
    elif isinstance(images, ImageFiles):
        for source in images.sources:
            h.update(json.dumps(_source_stamp(source)).encode())
    else:
        for i in range(len(images.ids)):
            img = images[i]
            h.update(json.dumps([img.size, img.mode]).encode())
            h.update(img.tobytes())
    return h.hexdigest()


def _source_stamp(source: str | Path | tuple[str, bytes]) -> list[Any]:
    """What identifies one `ImageFiles` source: `[path, size, mtime_ns]` (None for a missing file), or
    `[name, sha256 of the bytes]`."""
    if isinstance(source, tuple):
        name, data = source
        return [name, hashlib.sha256(data).hexdigest()]
    path = Path(source).resolve()
    try:
        stat = path.stat()
    except FileNotFoundError:
        return [str(path), None, None]
    return [str(path), stat.st_size, stat.st_mtime_ns]
