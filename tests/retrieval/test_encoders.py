"""The first-stage encoder: local configs, batched encoding, weights round trips, clear errors."""

from __future__ import annotations

import pytest
import torch

from mmrerank.core.items import Texts
from mmrerank.losses import symmetric_info_nce
from mmrerank.retrieval.clip import CLIPEncoder, load_state_dict
from mmrerank.retrieval.module import CLIPModule


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return CLIPEncoder("mmrerank-tiny-vit")


def test_unknown_model_name_is_an_error():
    with pytest.raises(ValueError, match="unknown open_clip model 'no-such-model'"):
        CLIPEncoder("no-such-model")


def test_batched_encoding_matches_one_batch(encoder, tiny_test_split):
    images = tiny_test_split.images
    small = encoder.encode(images, batch_size=7, progress=False)
    whole = encoder.encode_images(encoder.image_tensor([images[i] for i in range(len(images))]))
    assert small.shape == (len(images), 128)
    assert torch.allclose(small, whole, atol=1e-5)
    assert torch.allclose(small.norm(dim=1), torch.ones(len(images)), atol=1e-5)
    texts = Texts(["a", "b", "c"], ["a red circle", "a blue box above a star", "a tiny green hexagon"])
    assert torch.allclose(encoder.encode(texts, batch_size=2, progress=False), encoder.encode_texts(texts.texts),
                          atol=1e-5)


def test_weights_round_trip_safetensors_and_lightning(encoder, tmp_path):
    texts = ["a big red star left of a small cyan disc"]
    expected = encoder.encode_texts(texts)
    encoder.save_pretrained(tmp_path / "saved")
    other = CLIPEncoder("mmrerank-tiny-vit")
    assert not torch.allclose(other.encode_texts(texts), expected)
    other.load_weights(tmp_path / "saved")
    assert torch.allclose(other.encode_texts(texts), expected, atol=1e-6)
    again = CLIPEncoder.from_pretrained(tmp_path / "saved")  # the folder names its architecture
    assert again.model_name == "mmrerank-tiny-vit"
    assert torch.allclose(again.encode_texts(texts), expected, atol=1e-6)

    module = CLIPModule("mmrerank-tiny-vit")
    module.encoder.model.load_state_dict(encoder.model.state_dict())
    torch.save({"state_dict": module.state_dict(), "global_step": 3}, tmp_path / "m.ckpt")
    third = CLIPEncoder("mmrerank-tiny-vit")
    third.load_weights(tmp_path / "m.ckpt")
    assert torch.allclose(third.encode_texts(texts), expected, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_state_dict(tmp_path / "missing.safetensors")


def test_contrastive_loss_matches_naive_formula():
    torch.manual_seed(1)
    a = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    b = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    logits = 10.0 * a @ b.T
    naive = 0.0
    for i in range(5):
        naive += -torch.log_softmax(logits[i], 0)[i] - torch.log_softmax(logits[:, i], 0)[i]
    assert torch.allclose(symmetric_info_nce(a, b, 10.0), naive / 10, atol=1e-6)
