"""Items (texts or images, with ids) and retrieval tasks (queries against a corpus, with judgements)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mmrerank.core.run import Qrels


class ImageLoadError(OSError):
    """An image that is missing or cannot be decoded; the message names the file."""


@dataclass
class Texts:
    """Text items. `texts[i]` is the text with id `ids[i]`."""

    ids: list[str]
    texts: list[str]
    modality: str = field(default="text", init=False)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> str:
        return self.texts[i]

    def subset(self, rows: Sequence[int]) -> Texts:
        return Texts([self.ids[i] for i in rows], [self.texts[i] for i in rows])


@dataclass
class ImageArray:
    """Images held in one `[N, H, W, 3]` uint8 array (the synthetic benchmark's form; memory-mappable)."""

    ids: list[str]
    pixels: np.ndarray
    modality: str = field(default="image", init=False)

    def __post_init__(self) -> None:
        if self.pixels.ndim != 4 or self.pixels.shape[-1] != 3 or self.pixels.dtype != np.uint8:
            raise ValueError(f"pixels must be uint8 [N, H, W, 3], got {self.pixels.dtype} {self.pixels.shape}")
        if len(self.ids) != len(self.pixels):
            raise ValueError(f"{len(self.ids)} ids for {len(self.pixels)} images")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Image.Image:
        return Image.fromarray(np.asarray(self.pixels[i]))

    def subset(self, rows: Sequence[int]) -> ImageArray:
        return ImageArray([self.ids[i] for i in rows], self.pixels[list(rows)])


@dataclass
class ImageFiles:
    """Images read lazily from files, or from encoded bytes (parquet / hub rows) with a name for errors.

    Attributes:
        ids: one id per image.
        sources: a path per image, or `(name, bytes)` for an encoded image held in memory.
    """

    ids: list[str]
    sources: list[str | Path | tuple[str, bytes]]
    modality: str = field(default="image", init=False)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Image.Image:
        source = self.sources[i]
        name, data = (source if isinstance(source, tuple) else (str(source), None))
        try:
            with Image.open(io.BytesIO(data) if data is not None else source) as img:
                return img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise ImageLoadError(f"cannot read image {name}: {err}") from err

    def subset(self, rows: Sequence[int]) -> ImageFiles:
        return ImageFiles([self.ids[i] for i in rows], [self.sources[i] for i in rows])

    def unreadable(self) -> list[int]:
        """Rows whose image is missing or does not decode (each file is opened and decoded once)."""
        bad = []
        for i in range(len(self)):
            try:
                self[i]
            except ImageLoadError:
                bad.append(i)
        return bad


Items = Texts | ImageArray | ImageFiles


@dataclass
class RetrievalTask:
    """One ranking task: queries against a corpus, with judgements.

    Attributes:
        name: e.g. `synthetic/t2i`.
        queries, corpus: the items; `qrels` is indexed by their rows (`qrels.query_ids == queries.ids`).
    """

    name: str
    queries: Items
    corpus: Items
    qrels: Qrels

    def __post_init__(self) -> None:
        self.qrels = self.qrels.reindex(self.queries.ids, self.corpus.ids)

    @property
    def direction(self) -> str:
        return self.name.rsplit("/", 1)[-1]
