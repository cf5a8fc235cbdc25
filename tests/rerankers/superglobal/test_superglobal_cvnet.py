"""SuperGlobal with CVNet weights as the official code runs it: BGR preprocessing and ReLU+.

The expectations are hand-computed or transcribed from github.com/ShihaoShao-GH/SuperGlobal (test/dataset.py,
core/transforms.py, model/resnet.py, modules/coarse_retrieval/relup.py), independently of the module's tables.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.models.resnet import Bottleneck, ResNet

from mmrerank.rerankers.superglobal.extractor import (
    PoolingConfig,
    ReLUPlus,
    SuperGlobalExtractor,
    _to_tensor,
    set_relu_plus,
)

# ----------------------------------------------------------------------------------------------------------------
# Preprocessing

# (R, G, B) per pixel of a 2 x 2 image; 51 / 255 = 0.2, 102 / 255 = 0.4, 153 / 255 = 0.6.
PIXELS = [[(255, 0, 51), (0, 255, 255)],
          [(51, 102, 153), (255, 255, 255)]]


def two_by_two() -> Image.Image:
    return Image.fromarray(np.array(PIXELS, dtype=np.uint8), mode="RGB")


def test_cvnet_preprocessing_hand_computed():
    # Channel 0 is blue: (B / 255 - 0.406) / 0.225; 1 is green: (G / 255 - 0.456) / 0.224; 2 is red:
    # (R / 255 - 0.485) / 0.229.
    # Blue 51: (0.2 - 0.406) / 0.225 = -206 / 225; blue 255: 594 / 225; blue 153: (0.6 - 0.406) / 0.225 = 194 / 225.
    # Green 0: -456 / 224; 255: 544 / 224; 102: (0.4 - 0.456) / 0.224 = -56 / 224 = -0.25.
    # Red 255: 515 / 229; 0: -485 / 229; 51: (0.2 - 0.485) / 0.229 = -285 / 229.
    expected = torch.tensor([[[[-206 / 225, 594 / 225], [194 / 225, 594 / 225]],
                              [[-456 / 224, 544 / 224], [-56 / 224, 544 / 224]],
                              [[515 / 229, -485 / 229], [-285 / 229, 515 / 229]]]])
    extractor = SuperGlobalExtractor("resnet10t", cvnet_preprocessing=True)
    got = extractor.normalise(_to_tensor(two_by_two())[None])
    assert got.shape == (1, 3, 2, 2) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)
    # Without it: RGB order and timm's RGB statistics (red first: (255 / 255 - 0.485) / 0.229 = 515 / 229).
    rgb = SuperGlobalExtractor("resnet10t").normalise(_to_tensor(two_by_two())[None])
    torch.testing.assert_close(rgb[0, 0, 0, 0], torch.tensor(515 / 229), rtol=0, atol=2e-6)
    torch.testing.assert_close(rgb[0, 2, 0, 0], torch.tensor(-206 / 225), rtol=0, atol=2e-6)


def official_prepare_im(bgr_hwc: np.ndarray) -> np.ndarray:
    """test/dataset.py's `DataSet._prepare_im` with core/transforms.py's `color_norm`, on a cv2.imread array."""
    mean, sd = [0.406, 0.456, 0.485], [0.225, 0.224, 0.229]
    im = bgr_hwc.astype(np.float32, copy=False).transpose([2, 0, 1])
    im = im / 255.0
    for i in range(im.shape[0]):
        im[i] = im[i] - mean[i]
        im[i] = im[i] / sd[i]
    return im


def test_cvnet_preprocessing_is_bit_identical_to_the_official_loader():
    g = np.random.default_rng(0)
    rgb = g.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    expected = official_prepare_im(rgb[:, :, ::-1])  # cv2.imread gives the channels blue first
    extractor = SuperGlobalExtractor("resnet10t", cvnet_preprocessing=True)
    got = extractor.normalise(_to_tensor(Image.fromarray(rgb, mode="RGB"))[None])[0]
    assert torch.equal(got, torch.from_numpy(expected))


def test_cvnet_rescaling_uses_integer_sizes_without_antialiasing():
    # model/resnet.py resizes to [int(H * s), int(W * s)]: 4 x 4 at s = 0.7071 -> 2 x 2, so each output pixel
    # samples the centre of a 2 x 2 block (bilinear, no antialiasing): the block's mean. Input x[i, j] = 4 i + j.
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4)
    expected = torch.tensor([[2.5, 4.5], [10.5, 12.5]]).expand(1, 3, 2, 2)
    extractor = SuperGlobalExtractor("resnet10t", cvnet_preprocessing=True)
    torch.testing.assert_close(extractor._rescale(x, 0.7071), expected, rtol=0, atol=1e-6)
    assert extractor._rescale(x, 1.0) is x
    # Our default keeps antialiasing for downscaling, which blurs more than the 2 x 2 block.
    default = SuperGlobalExtractor("resnet10t")._rescale(x, 0.7071)
    assert default.shape == (1, 3, 2, 2) and not torch.allclose(default, expected, atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# ReLU+

THRESHOLD = 0.014
# Official sites with SupG.relup True (model/resnet.py): stage 1 clamps inside the branch (after a_bn, b_bn) and
# after the residual sum; stages 2 and 3 after the residual sum only; stage 4 and the stem keep ReLUs.
CLAMPED = {1: {"act1", "act2", "act3"}, 2: {"act3"}, 3: {"act3"}, 4: set()}
BN1_BIAS = [-0.5, 0.005]  # act1's input (width 2)
BN2_BIAS = [0.01, 0.3]  # act2's input
BRANCH = 0.01  # bn3's bias: the residual branch's output, every channel
SHORTCUT = [0.003, -0.2, 0.5, 0.004, 0.01, 0.0, -0.01, 1.0]  # the projection's bn bias (8 channels)


def tiny_resnet() -> ResNet:
    """A bottleneck ResNet with one block per stage, width 2 (8 output channels), whose activations are known:
    every BN has weight 0, so it outputs its bias at every position, whatever the convolutions compute."""
    torch.manual_seed(0)
    model = ResNet(Bottleneck, [1, 1, 1, 1], channels=(2, 2, 2, 2), stem_width=4, num_classes=0, global_pool="")
    with torch.no_grad():
        for i in range(1, 5):
            block = getattr(model, f"layer{i}")[0]
            for bn, bias in ((block.bn1, BN1_BIAS), (block.bn2, BN2_BIAS), (block.bn3, [BRANCH] * 8),
                             (block.downsample[1], SHORTCUT)):
                bn.weight.zero_()
                bn.bias.copy_(torch.tensor(bias))
    return model.eval()


def activations(model: ResNet) -> dict[tuple[int, str], torch.Tensor]:
    """Each block's act1 / act2 / act3 output at one position, `[C]`, from one forward pass."""
    seen = {}
    hooks = [getattr(getattr(model, f"layer{i}")[0], name).register_forward_hook(
        lambda module, inputs, out, key=(i, name): seen.__setitem__(key, out[0, :, 0, 0].clone()))
        for i in range(1, 5) for name in ("act1", "act2", "act3")]
    with torch.no_grad():
        model.forward_features(torch.rand(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("enabled", [True, False])
def test_relu_plus_clamps_where_the_official_resnet_does(enabled):
    model = tiny_resnet()
    set_relu_plus(model, enabled)
    seen = activations(model)
    inputs = {"act1": BN1_BIAS, "act2": BN2_BIAS, "act3": [BRANCH + s for s in SHORTCUT]}
    for stage in range(1, 5):
        for name, values in inputs.items():
            floor = THRESHOLD if enabled and name in CLAMPED[stage] else 0.0
            expected = torch.tensor([max(v, floor) for v in values])
            torch.testing.assert_close(seen[stage, name], expected, rtol=0, atol=1e-7, msg=f"layer{stage}.{name}")
    if enabled:
        # The clamp sits after the residual sum: 0.01 + 0.003 = 0.013 -> 0.014. (Clamping the branch first would
        # give 0.014 + 0.003 = 0.017.)
        assert abs(seen[1, "act3"][0].item() - THRESHOLD) < 1e-7
        assert abs(seen[4, "act3"][0].item() - 0.013) < 1e-7  # stage 4: a plain ReLU


def test_relu_plus_needs_a_bottleneck_resnet():
    with pytest.raises(ValueError, match="Bottleneck"):
        set_relu_plus(timm.create_model("resnet10t", num_classes=0))  # basic blocks
    with pytest.raises(ValueError, match="Bottleneck"):
        SuperGlobalExtractor("resnet10t", relu_plus=True)


def to_cvnet(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm bottleneck ResNet's state under CVNet's pycls names (`encoder_q.s{stage}.b{block}.f.a`, ...)."""
    out = {}
    for key, value in timm_state.items():
        head, _, rest = key.partition(".")
        if head in ("conv1", "bn1"):
            out[f"encoder_q.stem.{'conv' if head == 'conv1' else 'bn'}.{rest}"] = value
        elif head.startswith("layer"):
            block, kind, rest = rest.split(".", 2)
            prefix = f"encoder_q.s{head[5:]}.b{int(block) + 1}"
            if kind == "downsample":
                index, rest = rest.split(".", 1)
                out[f"{prefix}.{'proj' if index == '0' else 'bn'}.{rest}"] = value
            else:
                letter = "abc"[int(kind[-1]) - 1]
                out[f"{prefix}.f.{letter if kind.startswith('conv') else letter + '_bn'}.{rest}"] = value
    return out


def test_cvnet_weights_switch_the_official_setting_on_by_default(tmp_path):
    source = timm.create_model("resnet26", num_classes=0, global_pool="")
    torch.save({"model_state": to_cvnet(source.state_dict())}, tmp_path / "cvnet.pth")
    path = str(tmp_path / "cvnet.pth")
    pooling = PoolingConfig.plain_gem()

    cvnet = SuperGlobalExtractor("resnet26", pooling, cvnet_checkpoint=path)
    assert cvnet.cvnet_preprocessing and cvnet.relu_plus
    assert cvnet.mean.flatten().tolist() == pytest.approx([0.406, 0.456, 0.485])
    assert cvnet.std.flatten().tolist() == pytest.approx([0.225, 0.224, 0.229])
    for stage in range(1, 5):
        for block in getattr(cvnet.trunk, f"layer{stage}"):
            for name in ("act1", "act2", "act3"):
                assert isinstance(getattr(block, name), ReLUPlus) == (name in CLAMPED[stage])
    assert isinstance(cvnet.trunk.act1, torch.nn.ReLU)  # the stem

    plain = SuperGlobalExtractor("resnet26", pooling)
    assert not plain.cvnet_preprocessing and not plain.relu_plus
    assert not any(isinstance(m, ReLUPlus) for m in plain.modules())
    assert plain.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])

    # Either can be switched off explicitly; with both off the CVNet weights give the plain trunk's descriptors.
    off = SuperGlobalExtractor("resnet26", pooling, cvnet_checkpoint=path, cvnet_preprocessing=False, relu_plus=False)
    assert not any(isinstance(m, ReLUPlus) for m in off.modules())
    source_extractor = SuperGlobalExtractor("resnet26", pooling)
    source_extractor.trunk.load_state_dict(source.state_dict())
    pixels = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        reference = source_extractor.eval()(pixels)
        torch.testing.assert_close(off.eval()(pixels), reference)
        assert not torch.allclose(cvnet.eval()(pixels), reference, atol=1e-4)
