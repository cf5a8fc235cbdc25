"""EDJE end to end: vision sources, hard-negative mining, training, the token store of a corpus, reranking."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmrerank.cli import main
from mmrerank.core.run import Run
from mmrerank.datasets.synthetic import ensure_split, load_scenes, load_synthetic
from mmrerank.datasets.synthetic.scenes import satisfies, scene_arrays
from mmrerank.losses import listwise_softmax
from mmrerank.rerankers.edje import EDJE, EDJEConfig, EDJEReranker, VisionTokenSource, build_wordpiece_tokenizer
from mmrerank.rerankers.fusion import Fused
from mmrerank.retrieval.clip import CLIPEncoder
from mmrerank.retrieval.negatives import first_non_relevant, mine_hard_negatives

pytestmark = pytest.mark.slow  # end to end: trains models

CONFIG = "configs/edje/synthetic.yaml"
TINY_JOINT = '{"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}'


# --- mining ----------------------------------------------------------------------------------------------------------

def test_first_non_relevant_by_hand():
    candidates = torch.tensor([[5, 3, 9, 1], [2, 4, 6, 8]])
    relevant = torch.tensor([[False, True, False, True], [True, True, True, True]])
    assert first_non_relevant(candidates, relevant, 3).tolist() == [[5, 9, -1], [-1, -1, -1]]
    assert first_non_relevant(candidates, relevant, 6).tolist() == [[5, 9, -1, -1, -1, -1], [-1] * 6]


def test_mined_negatives_are_the_first_non_relevant_candidates(tiny_config):
    data = load_synthetic("train", tiny_config, progress=False)
    folder = ensure_split(tiny_config, "train", progress=False)
    attrs, rels = scene_arrays(load_scenes(folder))
    relevant = satisfies(np.load(folder / "specs.npy"), attrs, rels)  # the full matrix: an independent route
    relevant[np.arange(len(data.captions)), data.caption_image.numpy()] = True
    torch.manual_seed(0)
    image_emb = torch.nn.functional.normalize(torch.randn(len(data.images), 16), dim=-1)
    text_emb = torch.nn.functional.normalize(torch.randn(len(data.captions), 16), dim=-1)
    negatives = mine_hard_negatives(data, image_emb, text_emb, k=5, depth=20)
    sims = text_emb @ image_emb.T
    for c in range(len(data.captions)):
        order = torch.sort(sims[c], descending=True, stable=True).indices[:20].tolist()
        expected = [i for i in order if not relevant[c, i]][:5]
        assert negatives.t2i[c].tolist() == expected + [-1] * (5 - len(expected))
    for i in range(len(data.images)):
        order = torch.sort(sims[:, i], descending=True, stable=True).indices[:20].tolist()
        expected = [c for c in order if not relevant[c, i]][:5]
        assert negatives.i2t[i].tolist() == expected + [-1] * (5 - len(expected))


# --- vision sources --------------------------------------------------------------------------------------------------

def test_vision_sources_give_patch_tokens(tmp_path):
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    cnn = VisionTokenSource("open_clip:mmrerank-tiny-resnet", feature_index=2)
    assert (cnn.num_patches, cnn.dim) == (64, 128) and cnn.encode([image, image]).shape == (2, 64, 128)
    vit = VisionTokenSource("open_clip:mmrerank-tiny-vit")
    tokens = vit.encode([image])
    assert tokens.shape == (1, vit.num_patches, vit.dim) and vit.num_patches == (64 // 8) ** 2
    timm_vit = VisionTokenSource("timm:vit_tiny_patch16_224", image_size=32)
    assert timm_vit.encode([image]).shape == (1, 4, 192)  # prefix ([CLS]) token dropped

    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=32, patch_size=8)
    SiglipVisionModel(config).save_pretrained(tmp_path / "siglip")
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "siglip")
    hf = VisionTokenSource(f"hf:{tmp_path / 'siglip'}")
    assert hf.encode([image]).shape == (1, 16, 32)
    assert not any(p.requires_grad for p in hf.parameters())
    with pytest.raises(ValueError, match="kind one of"):
        VisionTokenSource("clip-vit")
    with pytest.raises(ValueError, match="checkpoint"):
        VisionTokenSource("first_stage:mmrerank-tiny-resnet")


# --- the model -------------------------------------------------------------------------------------------------------

def tiny_model(m: int | None = 4, patches: int = 9, width: int = 24) -> EDJE:
    tokenizer = build_wordpiece_tokenizer(["a red circle left of a blue square", "a green star above a box"] * 3,
                                          vocab_size=120)
    config = EDJEConfig(vision="open_clip:mmrerank-tiny-resnet", patch_dim=width, num_patches=patches,
                        num_image_tokens=m, adapter_heads=2, adapter_mlp_ratio=2, patch_positions=True,
                        joint={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "intermediate_size": 64, "hidden_dropout_prob": 0.0,
                               "attention_probs_dropout_prob": 0.0}, max_text_len=12)
    return EDJE(config, tokenizer)


@pytest.mark.parametrize("m", [4, None])
def test_model_shapes_and_folder_round_trip(tmp_path, m):
    torch.manual_seed(0)
    model = tiny_model(m).eval()
    patches = torch.randn(3, 9, 24)
    tokens = model.compress(patches)
    assert tokens.shape == (3, m or 9, 32)
    with torch.no_grad():
        before = model.score(["a red circle", "a box", "a green star above a blue circle"], tokens)
    model.save_pretrained(tmp_path / "edje")
    again = EDJE.from_pretrained(tmp_path / "edje")
    with torch.no_grad():
        torch.testing.assert_close(again.score(["a red circle", "a box", "a green star above a blue circle"],
                                               again.compress(patches)), before)
    with pytest.raises(FileNotFoundError, match="config.json"):
        EDJE.from_pretrained(tmp_path / "missing")
    (tmp_path / "edje" / "tokens" / "synthetic-test").mkdir(parents=True)  # a store of the model being replaced
    model.save_pretrained(tmp_path / "edje")
    assert not (tmp_path / "edje" / "tokens").exists()


@pytest.mark.parametrize("m", [4, None])
def test_patch_statistics_standardise_every_channel_and_travel_with_the_model(tmp_path, m):
    torch.manual_seed(0)
    model = tiny_model(m).eval()
    patches = torch.randn(6, 9, 24) * torch.linspace(0.5, 4, 24) + torch.linspace(-3, 3, 24)  # [N, P, D]
    flat = patches.reshape(-1, 24)
    by_hand = (patches - flat.mean(0)) / flat.std(0)
    with torch.no_grad():
        expected = model.compress(by_hand)  # identity statistics until they are set
        model.set_patch_statistics(patches)
        torch.testing.assert_close(model.compress(patches), expected)
        model.save_pretrained(tmp_path / "edje")
        torch.testing.assert_close(EDJE.from_pretrained(tmp_path / "edje").compress(patches), expected)


def test_a_few_steps_drive_the_itm_loss_down_and_separate_positives():
    torch.manual_seed(1)
    model = tiny_model().train()
    texts = ["a red circle left of a blue square", "a green star above a box"]
    patches = torch.randn(2, 4, 9, 24)  # [query, candidate, P, D]; candidate 0 is the positive
    labels = torch.tensor([[1.0, 0, 0, 0]] * 2)
    ids, mask = model.joint.tokenize([t for t in texts for _ in range(4)])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        scores = model(ids, mask, model.compress(patches.flatten(0, 1))).view(2, 4)
        loss = listwise_softmax(scores, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 1.0 and losses[-1] < 0.3 * losses[0]
    model.eval()
    with torch.no_grad():
        scores = model(ids, mask, model.compress(patches.flatten(0, 1))).view(2, 4)
    assert (scores[:, :1] > scores[:, 1:]).all()


# --- fit -> precompute -> benchmark ----------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["first_stage", "words", "bert"])
def trained(request, tiny_config, tmp_path_factory, bert_folder):
    """`mmrerank fit` with the synthetic config, shrunk: a random first stage, a 1-layer joint encoder, 4 steps; with
    the config's text side (the first stage's text tower), with the joint encoder's own word pieces plus MLM and
    text-embedding recovery, and with a pretrained BERT folder (the hub's format) and its tokenizer."""
    root = tmp_path_factory.mktemp("edje")
    first_stage = root / "fs"
    CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(first_stage)
    syn = [arg for split in ("train", "val") for arg in
           (f"--data.init_args.{split}=Synthetic", f"--data.init_args.{split}.init_args.split={split}",
            *synthetic_args(f"data.init_args.{split}.init_args", tiny_config))]
    joint = TINY_JOINT
    if request.param == "first_stage":
        text = [f"--model.init_args.config.text_checkpoint={first_stage}"]
    elif request.param == "words":
        text = ["--model.init_args.config.text=words",
                "--model.init_args.loss_functions=[[listwise, 1.0], [mlm, 0.5], [recovery, 0.5]]"]
    else:
        joint = json.dumps({"name": str(bert_folder)})
        text = ["--model.init_args.config.text=words", f"--model.init_args.training.tokenizer={bert_folder}"]
    main(["fit", "--config", CONFIG, f"--trainer.default_root_dir={root}", "--trainer.max_steps=4",
          "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
          f"--model.init_args.config.vision_checkpoint={first_stage}", f"--model.init_args.config.joint={joint}",
          "--model.init_args.config.num_image_tokens=4", *text,
          f"--model.init_args.training.export_dir={root / 'model'}",
          "--data.init_args.batch_size=4", "--data.init_args.n=3", "--data.init_args.hard=2",
          "--data.init_args.pool=4", "--data.init_args.mined=8",
          f"--data.init_args.first_stage.checkpoint={first_stage}", *syn])
    return root


def synthetic_args(prefix: str, config) -> list[str]:
    return [f"--{prefix}.synthetic.{k}={getattr(config, k)}" for k in
            ("root", "seed", "train_images", "val_images", "test_images")]


def image_text_args(config) -> list[str]:
    return ["--image_text.dataset=Synthetic", *synthetic_args("image_text.dataset.init_args", config)]


def test_fit_exports_a_model_with_its_tokenizer(trained):
    model = EDJE.from_pretrained(trained / "model")
    assert model.num_image_tokens == 4 and model.config.num_patches == 64 and model.config.patch_dim == 128
    assert model.tokenizer.mask_token_id is not None and (trained / "model" / "tokenizer").is_dir()
    if model.config.text != "words":  # the exported tower is the first stage's text tower, frozen as configured
        from mmrerank.retrieval.clip import load_state_dict

        weights = load_state_dict(trained / "fs")
        torch.testing.assert_close(model.joint.text.token_embedding.weight, weights["token_embedding.weight"])


def test_precompute_then_rerank_reorders_only_the_top_k(trained, tiny_config, tiny_test_split, tmp_path):
    store = tmp_path / "store"
    main(["precompute", f"--model={trained / 'model'}", f"--store={store}", "--shard_size=16", "--progress=false",
          "--dataset=Synthetic", *synthetic_args("dataset.init_args", tiny_config)])
    model = EDJE.from_pretrained(trained / "model")
    reranker = EDJEReranker(model, store)
    assert len(reranker.store) == len(tiny_test_split.images) and reranker.store.bytes_per_image == 4 * 32 * 2

    # store path vs on-the-fly path: the same scores up to the store's bf16 rounding
    captions = [tiny_test_split.captions[c] for c in range(3)]
    images = [tiny_test_split.images[i] for i in range(3)]
    from_store = reranker.score(captions, [reranker.store.rows(i) for i in range(3)])
    online = EDJEReranker(model).score(captions, images)
    torch.testing.assert_close(from_store, online, atol=0.05, rtol=0.05)
    # under bf16 autocast: the float32 scores up to bf16's rounding, and the model left in float32
    bf16 = EDJEReranker(model, store, bf16=True).score(captions, [reranker.store.rows(i) for i in range(3)])
    torch.testing.assert_close(bf16, from_store, atol=0.1, rtol=0.05)
    assert all(p.dtype == torch.float32 for p in model.parameters())

    task = tiny_test_split.task("t2i")
    torch.manual_seed(0)
    q, n, k, depth = len(task.queries), len(task.corpus), 12, 5
    indices = torch.stack([torch.randperm(n)[:k] for _ in range(q)])
    run = Run(indices, torch.linspace(1, 0, k).expand(q, k).clone(), task.queries.ids, task.corpus.ids)
    reranked = reranker.rerank(run, task, depth, batch_size=64, progress=False)
    assert torch.equal(reranked.indices[:, depth:], indices[:, depth:])  # the tail keeps its first-stage order
    assert torch.equal(reranked.indices[:, :depth].sort(1).values, indices[:, :depth].sort(1).values)
    for row in (0, q - 1):  # the head is sorted by the joint encoder's score of each pair
        expected = reranker.score([task.queries[row]] * depth, [task.corpus.ids[int(i)] for i in indices[row, :depth]])
        order = indices[row, :depth][torch.sort(expected, descending=True, stable=True).indices]
        assert reranked.indices[row, :depth].tolist() == order.tolist()

    # i2t: an image's stored tokens against its captions; fusion adds alpha x the first-stage score exactly
    i2t = tiny_test_split.task("i2t")
    fused = Fused(reranker, 2.0)
    rows, cands, first = torch.tensor([0, 1]), torch.tensor([3, 4]), torch.tensor([0.5, -0.25])
    plain = reranker.score_rows(i2t, rows, cands, first)
    torch.testing.assert_close(fused.score_rows(i2t, rows, cands, first), plain + 2.0 * first)
    stored = [reranker.store[i2t.queries.ids[0]], reranker.store[i2t.queries.ids[1]]]
    torch.testing.assert_close(plain, reranker.score(stored, [i2t.corpus[3], i2t.corpus[4]]))  # images first


def test_benchmark_reports_edje_rows(trained, tiny_config, tmp_path):
    out = tmp_path / "report"
    main(["benchmark", "--config", "benchmark/first_stage.yaml", *image_text_args(tiny_config),
          f"--first_stage.checkpoint={trained / 'fs'}",
          "--image_text.rerankers+=EDJERows", f"--image_text.rerankers.model={trained / 'model'}",
          "--image_text.rerankers.alpha=[1.0]", f"--image_text.rerankers.store={tmp_path / 'store'}",
          "--image_text.depth=20", "--image_text.rerank_depth=5", f"--output_dir={out}", "--progress=false"])
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert set(rows) == {"first stage", "edje", "edje + 1 x first stage"}
    for system in rows.values():
        assert all(0.0 <= v <= 1.0 for v in system.values()) and "i2t/Success@1" in system
    # reranking the top 5 cannot change Success@10 (the top 10 holds the same items)
    assert rows["edje"]["t2i/Success@10"] == pytest.approx(rows["first stage"]["t2i/Success@10"])


def test_missing_model_is_a_clear_error(tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="train one first"):
        main(["benchmark", "--config", "benchmark/first_stage.yaml", *image_text_args(tiny_config),
              f"--first_stage.save_to={tmp_path / 'fs'}",
              "--first_stage.train_steps=1", "--first_stage.batch_size=8", "--image_text.rerankers+=EDJERows",
              f"--image_text.rerankers.model={tmp_path / 'nothing'}", f"--output_dir={tmp_path / 'out'}",
              "--progress=false"])
