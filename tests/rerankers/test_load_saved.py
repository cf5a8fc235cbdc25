"""`load_reranker(folder)` loads what mmrerank saved (issue 26 item 4), and a folder given to the wrong loader is
refused saying what it is and which loader it needs (issue 27 item 7). Before: "unknown reranker" for any saved
folder, `TypeError: EDJEConfig.__init__()` for another folder given to the EDJE loader, shape errors without the
folder, and transformers' "Should have a model_type key" for a preset given a folder without config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmrerank.core.items import ImageFiles, RetrievalTask, Texts
from mmrerank.core.run import Qrels, Run
from mmrerank.rerankers.dual import DualEncoderReranker
from mmrerank.rerankers.edje import EDJE, EDJEConfig, EDJEReranker, build_wordpiece_tokenizer
from mmrerank.rerankers.folders import identify, package_version
from mmrerank.rerankers.presets import load_reranker
from mmrerank.retrieval.clip import CLIPEncoder

CAPTIONS = ["a red circle left of a blue square", "a green star above a box", "a small yellow triangle"]
BLIP = "Salesforce/blip-itm-base-coco"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """A CLIP first stage and an EDJE reading its patch tokens, both saved as mmrerank saves them; three images."""
    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(root / "clip")
    config = EDJEConfig(vision="first_stage:mmrerank-tiny-resnet", vision_checkpoint=str(root / "clip"),
                        feature_index=2, patch_dim=128, num_patches=64, num_image_tokens=4, adapter_heads=2,
                        adapter_mlp_ratio=2,
                        joint={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "intermediate_size": 64}, max_text_len=16)
    EDJE(config, build_wordpiece_tokenizer(CAPTIONS * 3, vocab_size=120)).save_pretrained(root / "edje")
    for i, color in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        Image.new("RGB", (32, 32), color).save(root / f"img{i}.png")
    return {"clip": root / "clip", "edje": root / "edje", "images": root}


def test_saved_folders_record_what_they_are(saved):
    for name, model_type in (("edje", "mmrerank-edje"), ("clip", "mmrerank-clip")):
        config = json.loads((saved[name] / "config.json").read_text())
        assert config["model_type"] == model_type and config["mmrerank_version"] == package_version()
        assert identify(saved[name]).model_type == model_type


def test_load_reranker_reranks_with_a_saved_edje(saved, tmp_path):
    reranker = load_reranker(saved["edje"], device="cpu")
    assert isinstance(reranker, EDJEReranker)
    paths = [str(saved["images"] / f"img{i}.png") for i in range(3)]
    images = [Image.open(p).convert("RGB") for p in paths]
    direct = EDJEReranker(EDJE.from_pretrained(saved["edje"]), device="cpu").score([CAPTIONS[0]] * 3, images)
    ranked = reranker.rank(CAPTIONS[0], paths, ids=["img0", "img1", "img2"])  # image paths, as in every family
    assert ranked.ids == [f"img{i}" for i in torch.sort(direct, descending=True, stable=True).indices.tolist()]
    torch.testing.assert_close(torch.tensor(ranked.scores), torch.sort(direct, descending=True).values)

    # a run file over the user's images, in its own order, reranked by id
    task = RetrievalTask("mine/t2i", Texts(["c0", "c1"], CAPTIONS[:2]),
                         ImageFiles(["img0", "img1", "img2"], paths), Qrels.from_dict({"c0": {"img0": 1}}))
    (tmp_path / "run.trec").write_text("c1 Q0 img2 1 3.0 x\nc1 Q0 img0 2 2.0 x\nc0 Q0 img1 1 5.0 x\n"
                                       "c0 Q0 img2 2 4.0 x\nc0 Q0 img0 3 1.0 x\n")
    out = reranker.rerank(Run.read_trec(tmp_path / "run.trec"), task, rerank_depth=3, progress=False).to_dict()
    expected = {d: float(s) for d, s in zip(["img1", "img2", "img0"],
                                            reranker.score([CAPTIONS[0]] * 3, [images[1], images[2], images[0]]))}
    assert list(out) == ["c1", "c0"]
    assert out["c0"] == pytest.approx(expected, rel=1e-5)
    assert list(out["c0"]) == sorted(expected, key=expected.get, reverse=True)


def test_older_folders_without_model_type_are_recognised(saved, tmp_path):
    for name, loaded in (("edje", EDJEReranker), ("clip", DualEncoderReranker)):
        old = tmp_path / name
        old.mkdir()
        for item in saved[name].iterdir():
            target = old / item.name
            if item.is_dir():
                target.symlink_to(item)
            else:
                target.write_bytes(item.read_bytes())
        config = json.loads((old / "config.json").read_text())
        del config["model_type"], config["mmrerank_version"]
        (old / "config.json").write_text(json.dumps(config))
        assert isinstance(load_reranker(old, device="cpu"), loaded)


def test_a_saved_clip_reranks_by_cosine(saved):
    reranker = load_reranker(saved["clip"], device="cpu")
    assert isinstance(reranker, DualEncoderReranker)
    encoder = CLIPEncoder.from_pretrained(saved["clip"]).eval()
    image = Image.open(saved["images"] / "img1.png").convert("RGB")
    with torch.no_grad():
        expected = (encoder.encode_texts([CAPTIONS[1]]) * encoder.encode_images(encoder.image_tensor([image]))).sum()
    torch.testing.assert_close(reranker.score([image], [CAPTIONS[1]]), expected.reshape(1))  # either order


def test_a_saved_mllm_is_recognised(tmp_path):
    from mmrerank.rerankers.mllm import MLLMReranker, build_tiny_vlm

    trained = MLLMReranker(build_tiny_vlm(tmp_path / "tiny"), score="logit", device="cpu")
    trained.save_pretrained(tmp_path / "saved")
    settings = json.loads((tmp_path / "saved" / "reranker.json").read_text())
    assert settings["model_type"] == "mmrerank-mllm" and settings["mmrerank_version"] == package_version()
    loaded = load_reranker(tmp_path / "saved", device="cpu")
    assert isinstance(loaded, MLLMReranker) and loaded.score_mode == "logit"
    image = Image.new("RGB", (56, 56), (9, 99, 199))
    torch.testing.assert_close(loaded.score(["a query"], [image]), trained.score(["a query"], [image]))


def test_wrong_loader_messages_say_what_the_folder_is(saved, tmp_path):
    empty = tmp_path / "copy_of_blip"
    empty.mkdir()
    (empty / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"copy_of_blip could not be loaded as preset 'Salesforce/blip-itm-base-coco'"
                                         r".*a folder without config.json \(files: \['model.safetensors'\]\)"
                                         r".*hub repository's files \(config.json"):
        load_reranker(empty, preset=BLIP)
    with pytest.raises(ValueError, match=r"is an EDJE reranker saved by mmrerank.*not a copy of preset "
                                         r"'Salesforce/blip-itm-base-coco'.*load_reranker\(folder\)"):
        load_reranker(saved["edje"], preset=BLIP)
    with pytest.raises(ValueError, match=r"clip is not an EDJE folder: it is a CLIP dual encoder saved by mmrerank.*"
                                         r"model_type 'mmrerank-clip'.*load_reranker\(folder\)"):
        EDJE.from_pretrained(saved["clip"])
    blip = tmp_path / "blip"
    blip.mkdir()
    (blip / "config.json").write_text(json.dumps({"model_type": "blip", "text_config": {}}))
    with pytest.raises(ValueError, match=r"transformers 'blip' model.*preset=<the blip preset"):
        EDJE.from_pretrained(blip)
    with pytest.raises(ValueError, match=r"blip is a transformers 'blip' model.*not a folder mmrerank saved"):
        load_reranker(blip)
    with pytest.raises(ValueError, match="unknown reranker 'no/such'"):
        load_reranker("no/such")


def test_shape_mismatch_names_the_folder(saved, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer").symlink_to(saved["edje"] / "tokenizer")
    (bad / "model.safetensors").write_bytes((saved["edje"] / "model.safetensors").read_bytes())
    config = json.loads((saved["edje"] / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "num_image_tokens": 6}))
    with pytest.raises(ValueError, match=r"(?s)bad/model.safetensors does not fit .*bad/config.json.*size mismatch"):
        load_reranker(bad)
    (bad / "config.json").write_text(json.dumps({**config, "future_option": 1}))
    with pytest.raises(ValueError, match=r"keys \['future_option'\].*load it with the mmrerank version that saved it"):
        EDJE.from_pretrained(bad)
