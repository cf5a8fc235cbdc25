"""The image resize that Qwen-VL model cards apply before the processor: qwen-vl-utils' `fetch_image`.

Cards that build their inputs with `qwen_vl_utils.process_vision_info` (lychee-rerank-mm's; Qwen3-VL-Reranker's
`qwen3_vl_reranker.py`) resize every image with PIL before the processor sees it: each side rounded to a multiple of
`factor` (the patch size times the 2x2 merge), scaled down (up) when the area is above `max_pixels` (below
`min_pixels`). The processor then applies its own `smart_resize` with its own limits. Resizing twice gives other
grids than resizing once: a 2000 x 1500 image becomes 1988 x 1512 here, then 62 x 82 patches under lychee's
processor limit (1280 * 28 * 28 pixels), where resizing once gives 60 x 82.

The formula is qwen-vl-utils 0.0.14's (`vision_process.py`: `smart_resize`, `fetch_image`, `to_rgb`), re-written
here so that no extra dependency is needed; the tests compare it with the package when it is installed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from PIL import Image

# qwen-vl-utils' defaults: 4 to 16384 merged tokens per image, and images at most 200 times longer than wide.
MIN_TOKENS, MAX_TOKENS, MAX_RATIO = 4, 16384, 200


def smart_resize(height: int, width: int, factor: int, min_pixels: int | None = None,
                 max_pixels: int | None = None) -> tuple[int, int]:
    """The (height, width) qwen-vl-utils resizes an image to: multiples of `factor` closest to the image's sides,
    scaled (keeping the aspect ratio) into [`min_pixels`, `max_pixels`] (defaults: 4 and 16384 times factor^2).

    Raises:
        ValueError: an aspect ratio above 200, or `min_pixels` above `max_pixels`.
    """
    max_pixels = MAX_TOKENS * factor ** 2 if max_pixels is None else max_pixels
    min_pixels = MIN_TOKENS * factor ** 2 if min_pixels is None else min_pixels
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels {min_pixels} is above max_pixels {max_pixels}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"an image of {width} x {height} pixels: the aspect ratio must be at most {MAX_RATIO}")
    h = max(factor, round(height / factor) * factor)  # Python's round (half to even), as qwen-vl-utils'
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy of `image`; a transparent (RGBA) image is laid over white, as qwen-vl-utils does (a plain
    `convert("RGB")` would keep the colour under transparent pixels)."""
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert("RGB")


@dataclass(frozen=True)
class VisionResize:
    """qwen-vl-utils' `fetch_image` resize of one image (`image_patch_size` 14: factor 28; 16: factor 32).

    Attributes:
        factor: the sides become multiples of this (patch size x 2, the spatial merge).
        min_pixels, max_pixels: the area bounds (None: qwen-vl-utils' defaults, 4 and 16384 x factor^2); a card that
            puts `min_pixels` / `max_pixels` in its messages' image entries sets them.
    """

    factor: int = 28
    min_pixels: int | None = None
    max_pixels: int | None = None

    def size(self, image: Image.Image) -> tuple[int, int]:
        """The (width, height) `image` is resized to."""
        height, width = smart_resize(image.height, image.width, self.factor, self.min_pixels, self.max_pixels)
        return width, height

    def __call__(self, image: Image.Image) -> Image.Image:
        """`image` in RGB, resized with PIL's bicubic filter (PIL's default, which qwen-vl-utils uses)."""
        return to_rgb(image).resize(self.size(image), Image.BICUBIC)

    def settings(self) -> dict[str, int | None]:
        return asdict(self)
