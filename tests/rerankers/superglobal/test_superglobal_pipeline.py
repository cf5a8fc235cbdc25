"""SuperGlobal end to end: the synthetic image-to-image benchmark, the descriptor pipeline's order of
operations, and the benchmark rows."""

from __future__ import annotations

import pickle
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from mmrerank.benchmark import benchmark
from mmrerank.datasets import SyntheticInstances
from mmrerank.datasets.revisited import protocol_relevance
from mmrerank.datasets.synthetic.instances import InstanceConfig, load_instances
from mmrerank.evaluation.suites import ImageText, Instances
from mmrerank.rerankers.superglobal import gem_plus, regional_gem
from mmrerank.rerankers.superglobal.extractor import PoolingConfig, SuperGlobalExtractor
from mmrerank.rerankers.superglobal.reranker import SuperGlobalRows
from mmrerank.retrieval.first_stage import FirstStage


def tiny(root, seed: int = 0) -> InstanceConfig:
    return InstanceConfig(seed=seed, queries=3, easy=2, hard=2, junk=1, distractors=12, image_size=64, root=str(root))


def test_instances_shape_determinism_and_labels(tmp_path):
    data = load_instances(tiny(tmp_path / "a"), progress=False)
    assert data.num_queries == 3 and data.num_db == 3 * (2 + 2 + 1 + 1) + 12  # + one near-duplicate twin each
    assert [len(x) for x in data.easy] == [2, 2, 2] and [len(x) for x in data.junk] == [1, 1, 1]
    labelled = torch.cat([*data.easy, *data.hard, *data.junk])
    assert len(labelled.unique()) == len(labelled)  # every database image has at most one label
    positives, ignored = protocol_relevance(data, "hard")
    assert all(set(p.tolist()) == set(h.tolist()) for p, h in zip(positives, data.hard))
    crop = data.query_image(0)
    assert crop.size[0] <= 64 and crop.size[1] <= 64
    again = load_instances(tiny(tmp_path / "b"), progress=False)
    first = (data.root / "gnd_synthetic.pkl").read_bytes()
    assert first == (again.root / "gnd_synthetic.pkl").read_bytes()
    assert (data.root / "jpg" / "db000000.jpg").read_bytes() == (again.root / "jpg" / "db000000.jpg").read_bytes()
    other = load_instances(tiny(tmp_path / "c", seed=1), progress=False)
    assert pickle.loads(first) != pickle.loads((other.root / "gnd_synthetic.pkl").read_bytes())


def test_descriptor_pipeline_order(monkeypatch):
    """Per scale: Regional-GeM -> GeM+ -> L2; then max over scales (Scale-GeM, p = inf) -> L2."""
    torch.manual_seed(0)
    extractor = SuperGlobalExtractor("resnet10t", PoolingConfig(scales=(0.5, 1.0)), min_side=8)
    maps = {}

    def fake_features(x):  # a positive map that depends on the input size, recorded per scale
        fmap = torch.rand(x.shape[0], 6, x.shape[-2] // 4, x.shape[-1] // 4) + 0.1
        maps[x.shape[-1]] = fmap
        return fmap

    monkeypatch.setattr(extractor.trunk, "forward_features", fake_features)
    out = extractor(torch.rand(2, 3, 32, 32))
    per_scale = [F.normalize(gem_plus(regional_gem(maps[s], 2.5, 5), 4.6), dim=-1) for s in (16, 32)]
    expected = F.normalize(torch.maximum(*per_scale), dim=-1)
    assert torch.allclose(out, expected, atol=1e-6)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown timm model"):
        SuperGlobalExtractor("no-such-cnn")


def test_benchmark_rows(tmp_path, tiny_config):
    report = benchmark(
        first_stage=FirstStage(save_to=str(tmp_path / "fs"), train_steps=1, batch_size=4, synthetic=tiny_config),
        instances=Instances(SyntheticInstances(**asdict(tiny(tmp_path / "i2i"))), rerank_depth=20,
                            rerankers=[SuperGlobalRows(k=3)]),
        image_text=ImageText(directions=[]), output_dir=str(tmp_path / "out"), progress=False)
    assert list(report.rows) == ["GeM", "SuperGlobal pooling", "SuperGlobal pooling + rerank"]
    for row in report.rows.values():
        assert set(row) == {"i2i/medium/mAP", "i2i/hard/mAP"}
        assert all(0.0 <= v <= 100.0 for v in row.values())
    assert (tmp_path / "out" / "report.md").read_text().count("| SuperGlobal pooling") == 2


def to_cvnet_names(timm_state: dict) -> dict:
    """The inverse renaming, written out per key kind (pycls names as CVNet stores them)."""
    out = {}
    for key, value in timm_state.items():
        parts = key.split(".")
        if parts[0] in ("conv1", "bn1"):
            new = ["stem", "conv" if parts[0] == "conv1" else "bn", *parts[1:]]
        elif parts[0].startswith("layer"):
            stage, block, kind = parts[0][5:], int(parts[1]) + 1, parts[2]
            if kind == "downsample":
                new = [f"s{stage}", f"b{block}", "proj" if parts[3] == "0" else "bn", *parts[4:]]
            else:
                letter = "abc"[int(kind[-1]) - 1]
                new = [f"s{stage}", f"b{block}", "f", letter if kind.startswith("conv") else f"{letter}_bn", *parts[3:]]
        else:
            continue  # timm's classifier
        out["encoder_q." + ".".join(new)] = value
    return out


def test_cvnet_weights_load_into_timm_trunk(tmp_path):
    torch.manual_seed(0)
    source = SuperGlobalExtractor("resnet26", PoolingConfig.plain_gem(), head_dim=2048, min_side=32)
    source.trunk.eval()
    state = to_cvnet_names(source.trunk.state_dict())
    state |= {"encoder_q.head.fc.weight": source.head.weight.detach(),
              "encoder_q.head.fc.bias": source.head.bias.detach()}
    torch.save({"model_state": state}, tmp_path / "cvnet.pth")
    loaded = SuperGlobalExtractor("resnet26", PoolingConfig.plain_gem(), head_dim=2048, min_side=32,
                                  cvnet_checkpoint=str(tmp_path / "cvnet.pth"), cvnet_preprocessing=False,
                                  relu_plus=False)  # the weights alone: the official setting is tested elsewhere
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(pixels), source.eval()(pixels), atol=1e-5)
    with pytest.raises(ValueError, match="head_dim"):
        SuperGlobalExtractor("resnet26", cvnet_checkpoint=str(tmp_path / "cvnet.pth"))
    with pytest.raises(ValueError, match="not a CVNet global model"):
        torch.save({"model_state": {"encoder_q.stem.conv.weight": torch.zeros(1)}}, tmp_path / "bad.pth")
        SuperGlobalExtractor("resnet26", cvnet_checkpoint=str(tmp_path / "bad.pth"))
