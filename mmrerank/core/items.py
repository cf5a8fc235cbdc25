"""Items (texts or images, with ids) and retrieval tasks (queries against a corpus, with judgements)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from mmrerank.core.metrics import evaluate
from mmrerank.core.run import Qrels, Run


class ImageLoadError(OSError):
    """An image that is missing or cannot be decoded; the message names the file."""


_GREY16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grey PNG / TIFF decode to these (older Pillow: "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa")


def to_rgb(img: Image.Image) -> Image.Image:
    """An image as 8-bit RGB the way a viewer shows it: EXIF orientation applied, transparency on white.

    `Image.convert("RGB")` alone clips 16-bit grey (`I;16`, `I`) to 255 and turns transparent pixels black (their
    stored colour, often 0); both change what a model sees without any error.

    Args:
        img: a decoded (or lazily opened) image of any mode.

    Returns:
        A new `RGB` image, rotated / mirrored by its EXIF orientation tag, with 16-bit grey scaled to 8 bits
        (`round(v / 257)`: 65535 -> 255) and alpha composited over white.

    Raises:
        ValueError: a 32-bit integer image with values outside the 16-bit range 0..65535.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in _GREY16:
        img = _grey16_to_l(img)
    if img.mode in _ALPHA or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _grey16_to_l(img: Image.Image) -> Image.Image:
    """16-bit grey -> 8-bit `L`, each value `v` to `round(v / 257)` (so 0..65535 maps onto 0..255 evenly)."""
    values = np.asarray(img).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"{img.mode} image with values in {values.min()}..{values.max()}; only 16-bit grey "
                         "(0..65535) is supported")
    # (v + 128) // 257 == round(v / 257) for integers (the half-way point is never an integer)
    return Image.fromarray(((values + 128) // 257).astype(np.uint8))  # 2-D uint8 -> mode L


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

    Each read returns `to_rgb` of the decoded image (EXIF orientation, 16-bit grey and transparency handled).

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
                return to_rgb(img)
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


@dataclass
class LazyImages:
    """Images made on demand by `load(row)` (benchmarks that read or crop images their own way, e.g. query
    regions)."""

    ids: list[str]
    load: Callable[[int], Image.Image]
    modality: str = field(default="image", init=False)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Image.Image:
        return self.load(i)


Items = Texts | ImageArray | ImageFiles | LazyImages


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

    def measure(self, run: Run, measures: Sequence[str]) -> dict[str, float]:
        """The task scores its own run: ir-measures-style `measures` over `qrels` (benchmark-specific tasks, such
        as document pages or the revisited protocol, override this with their official measures)."""
        return evaluate(run, self.qrels, measures)

    def curve(self, run: Run) -> list[float]:
        """Success@k for k = 1 .. depth (the recall-vs-k curve of image-text papers); [] where it means nothing."""
        scores = evaluate(run, self.qrels, [f"Success@{k}" for k in range(1, run.depth + 1)])
        return [scores[f"Success@{k}"] for k in range(1, run.depth + 1)]
