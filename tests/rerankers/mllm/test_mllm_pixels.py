"""Image sizes of the jina-reranker-m0 and lychee-rerank-mm presets, as their cards give them, in every hub layout.

The hub's Qwen2-VL / Qwen2.5-VL `preprocessor_config.json` holds `min_pixels` / `max_pixels` (3136 / 12845056);
transformers 5 saves `size` instead; a folder may hold both. The cards pass their limits as `min_pixels=` /
`max_pixels=` (jina: 3136 / 602112 in modeling.py's `compute_score`; lychee: 4 * 28 * 28 / 1280 * 28 * 28 after
qwen-vl-utils' own resize). The expected grids are worked out by hand in the comments.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from mmrerank.rerankers.mllm.presets import JINA, LYCHEE, PRESETS, QWEN3_VL_2B
from mmrerank.rerankers.mllm.resize import VisionResize, smart_resize
from mmrerank.rerankers.mllm.tiny_presets import (
    HUB_MAX_PIXELS,
    build_tiny_jina,
    build_tiny_qwen2_5_vl,
    build_tiny_qwen3_vl,
)
from mmrerank.rerankers.presets import load_reranker

LAYOUTS = ("min_max_pixels", "size", "both")


def _layout(folder, layout: str, tmp_path):
    """A copy of a hub-layout folder whose preprocessor_config.json holds the hub's limit as `layout` says."""
    copy = tmp_path / f"{folder.name}-{layout}"
    shutil.copytree(folder, copy)
    config_file = copy / "preprocessor_config.json"
    config = json.loads(config_file.read_text())
    assert config["max_pixels"] == HUB_MAX_PIXELS  # the hub's own keys, as built
    size = {"shortest_edge": config["min_pixels"], "longest_edge": config["max_pixels"]}
    if layout == "size":
        del config["min_pixels"], config["max_pixels"]
    if layout in ("size", "both"):
        config["size"] = size
    config_file.write_text(json.dumps(config))
    return copy


@pytest.fixture(scope="module")
def jina_folder(tmp_path_factory):
    return build_tiny_jina(tmp_path_factory.mktemp("jina") / "jina-reranker-m0", seed=2)


@pytest.fixture(scope="module")
def lychee_folder(tmp_path_factory):
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("lychee") / "lychee-rerank-mm", seed=4)


def _grid(reranker, image: Image.Image, query="a page") -> list[int]:
    return reranker.encode([query], [image])["image_grid_thw"][0].tolist()


PAGE = Image.new("RGB", (2000, 1500), (200, 180, 160))  # width x height


@pytest.mark.parametrize("layout", LAYOUTS)
def test_jina_page_gets_the_cards_pixel_limit_in_every_layout(jina_folder, layout, tmp_path):
    reranker = load_reranker(_layout(jina_folder, layout, tmp_path), preset=JINA, device="cpu")
    # 1500 x 2000 = 3,000,000 pixels > 602,112: scaled by sqrt(3e6 / 602112) = 2.2321 to 672 x 896, i.e. 24 x 32
    # merged tokens, 48 x 64 patches (the hub's 12,845,056 would leave it at 1512 x 1988: 108 x 142 patches)
    assert _grid(reranker, PAGE) == [1, 48, 64]
    assert _grid(reranker, PAGE, query=PAGE.resize((200, 150))) == [1, 48, 64]  # the document's image, listed first
    assert PRESETS[JINA].options["processor_kwargs"] == {"min_pixels": 3136, "max_pixels": 602112}  # not updated


def test_a_size_argument_is_not_changed_by_loading(jina_folder):
    # transformers writes the folder's limits into a `size` dict argument; the preset's options must not change
    size = {"shortest_edge": 3136, "longest_edge": 602112}
    reranker = load_reranker(jina_folder, preset=JINA, device="cpu", processor_kwargs={"size": size})
    assert size == {"shortest_edge": 3136, "longest_edge": 602112}
    assert reranker.processor.image_processor.size["longest_edge"] == HUB_MAX_PIXELS  # and `size` loses, as found


@pytest.mark.parametrize("layout", LAYOUTS)
def test_lychee_page_is_resized_twice_as_its_card_in_every_layout(lychee_folder, layout, tmp_path):
    reranker = load_reranker(_layout(lychee_folder, layout, tmp_path), preset=LYCHEE, device="cpu")
    # qwen-vl-utils first: sides rounded to multiples of 28 within its 16384-token limit, 1500 x 2000 -> 1512 x 1988;
    # then the processor: 1512 * 1988 > 1,003,520, scaled by 1.7306 to floor(31.2) x floor(41.0) = 31 x 41 merged
    # tokens, 62 x 82 patches (once from 1500 x 2000: 30 x 41, 60 x 82)
    assert _grid(reranker, PAGE) == [1, 62, 82]
    assert reranker.processor.image_processor.size["longest_edge"] == 1280 * 28 * 28


def test_smart_resize_by_hand():
    assert smart_resize(1500, 2000, 28) == (1512, 1988)  # round(53.6) = 54, round(71.4) = 71
    assert smart_resize(1500, 2000, 28, max_pixels=1280 * 28 * 28) == (840, 1148)  # scaled once: 30 x 41 tokens
    assert smart_resize(20, 30, 28) == (56, 84)  # below 4 tokens: scaled up by sqrt(3136 / 600), ceil to 28s
    assert smart_resize(96, 112, 28) == (84, 112)  # round(3.43) = 3, round(4) = 4
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2100, 28)


def test_vision_resize_equals_qwen_vl_utils():
    """Compared with the package (qwen-vl-utils 0.0.14) where it is installed."""
    qwen_vl_utils = pytest.importorskip("qwen_vl_utils")
    g = torch.Generator().manual_seed(0)
    rgba = Image.fromarray(torch.randint(0, 256, (37, 45, 4), generator=g, dtype=torch.uint8).numpy(), "RGBA")
    for image in (PAGE, PAGE.resize((333, 1001)), rgba, Image.new("L", (30, 20))):
        for factor, limits in ((28, {}), (32, {"min_pixels": 4 * 32 * 32, "max_pixels": 1800 * 32 * 32})):
            theirs = qwen_vl_utils.fetch_image({"image": image, **limits}, image_patch_size=factor // 2)
            ours = VisionResize(factor, **limits)(image)
            assert ours.size == theirs.size and ours.mode == theirs.mode == "RGB"
            assert ours.tobytes() == theirs.tobytes()


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory):
    return build_tiny_qwen3_vl(tmp_path_factory.mktemp("qwen3") / "Qwen3-VL-Reranker-2B", seed=3)


def test_qwen3_vl_page_pixels_are_its_codes(qwen3_folder):
    """qwen3_vl_reranker.py resizes with qwen-vl-utils (32-pixel grid, 4 to 1800 tokens) and then calls the
    processor with `do_resize=False`: the same pixel values, not only the same grid."""
    reranker = load_reranker(qwen3_folder, preset=QWEN3_VL_2B, device="cpu")
    page = _noise(7, 2000, 1500)
    # round to the grid: 1504 x 1984 > 1,843,200; scaled by sqrt(3e6 / 1843200) = 1.2758 to floor(36.7) x
    # floor(49.0) = 36 x 48 tokens of 32 pixels, 72 x 96 patches of 16
    inputs = reranker.encode(["a page"], [page])
    assert inputs["image_grid_thw"].tolist() == [[1, 72, 96]]
    qwen_vl_utils = pytest.importorskip("qwen_vl_utils")
    theirs = qwen_vl_utils.fetch_image({"image": page, "min_pixels": 4 * 32 * 32, "max_pixels": 1800 * 32 * 32},
                                       image_patch_size=16)
    expected = reranker.processor.image_processor(images=[theirs], do_resize=False, return_tensors="pt")
    torch.testing.assert_close(inputs["pixel_values"], expected["pixel_values"], atol=0, rtol=0)


def _noise(seed: int, width: int, height: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8).numpy())


def test_lychee_saved_and_loaded_keeps_both_resizes(lychee_folder, tmp_path):
    reranker = load_reranker(lychee_folder, preset=LYCHEE, device="cpu")
    again = type(reranker).from_pretrained(reranker.save_pretrained(tmp_path / "saved"), device="cpu")
    assert again.settings()["vision_resize"] == {"factor": 28, "min_pixels": None, "max_pixels": None}
    assert _grid(again, PAGE) == [1, 62, 82]
