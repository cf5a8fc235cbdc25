"""Every loader of files from outside refuses a malicious pickle, even when torch is told to default to full pickle.

`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` makes `torch.load` unpickle anything unless the caller passed `weights_only`
itself, so a loader that relies on torch's default runs the payload: a pickle whose `__reduce__` calls
`open(marker, "w")` and so creates the marker file. Each loader must raise and the marker must never appear.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmrerank.datasets.revisited import load_revisited
from mmrerank.rerankers.mllm import MLLMReranker, build_tiny_vlm
from mmrerank.rerankers.mllm.module import (
    MLLMRerankerModule,
    MLLMSettings,
    MLLMTraining,
    collate_groups,
    load_reranker_checkpoint,
)
from mmrerank.retrieval.clip import load_state_dict
from mmrerank.retrieval.negatives import HardNegatives


class Payload:
    """Unpickling it calls `open(marker, "w")`: the marker file exists iff the pickle's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm") / "model", seed=0)


@pytest.fixture
def unsafe_default(monkeypatch):
    """torch's default flipped to full unpickling, as an older torch or a user's environment may have it."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    """A torch file shaped like a checkpoint / state dict whose tensor is the payload; and its marker path."""
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"weight": Payload(marker)}, "hyper_parameters": {}, "t2i": Payload(marker)}, path)
    return path, marker


def test_the_payload_runs_under_torch_default(evil, unsafe_default):
    """The control: without an explicit `weights_only=True` the payload does run, so the refusals below count."""
    path, marker = evil
    with pytest.warns(UserWarning, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        torch.load(path, map_location="cpu")
    assert marker.exists()


def test_mllm_head_refuses(evil, unsafe_default, tiny_folder):
    path, marker = evil
    with pytest.raises(pickle.UnpicklingError):
        MLLMReranker(tiny_folder, head="mlp", head_path=path, device="cpu")
    assert not marker.exists()


def test_mllm_checkpoint_refuses(evil, unsafe_default):
    path, marker = evil
    with pytest.raises(pickle.UnpicklingError):
        load_reranker_checkpoint(path)
    assert not marker.exists()


def test_first_stage_state_dict_refuses(evil, unsafe_default):
    path, marker = evil
    with pytest.raises(pickle.UnpicklingError):
        load_state_dict(path, prefix="encoder.model.")
    assert not marker.exists()


def test_hard_negatives_refuse(evil, unsafe_default):
    path, marker = evil
    with pytest.raises(pickle.UnpicklingError):
        HardNegatives.load(path)
    assert not marker.exists()


def test_cvnet_weights_refuse(evil, unsafe_default):
    from mmrerank.rerankers.superglobal.extractor import _weights_only

    path, marker = evil
    with pytest.raises(pickle.UnpicklingError):
        _weights_only(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("poisoned", ["header.json", "ids.json", "tokens.bin"])
def test_edje_patch_cache_refuses(evil, unsafe_default, tmp_path, monkeypatch, poisoned):
    """A poisoned file of a `<cache>/patches/` store (the cache folder may be shared) is never unpickled nor used
    when a fit reads the cache back: the part is rebuilt from the encoder, with a warning."""
    from mmrerank.rerankers.edje.patches import cached_patch_tokens

    monkeypatch.setenv("MMRERANK_CACHE", str(tmp_path / "cache"))
    path, marker = evil
    key = {"vision": "open_clip:mmrerank-tiny-resnet", "dataset": "toy train split"}
    encode = lambda rows: torch.ones(len(rows), 2, 3) * rows[:, None, None]  # noqa: E731
    assert cached_patch_tokens(key, (2, 2, 3), encode, progress=False)[:].shape == (2, 2, 3)  # computed, cached
    [cached] = (tmp_path / "cache" / "patches").glob(f"*/part-00000/{poisoned}")
    cached.write_bytes(path.read_bytes())
    with pytest.warns(UserWarning, match="rebuilding"):
        tokens = cached_patch_tokens(key, (2, 2, 3), encode, progress=False)
    assert not marker.exists()
    assert torch.equal(tokens[:], encode(torch.arange(2)).half())


def test_revisited_ground_truth_refuses(tmp_path, unsafe_default):
    marker = tmp_path / "code_ran"
    with open(tmp_path / "gnd_evil.pkl", "wb") as f:
        pickle.dump({"imlist": [], "qimlist": [], "gnd": Payload(marker)}, f, protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle global"):
        load_revisited(tmp_path, "evil")
    assert not marker.exists()


def test_mllm_checkpoint_round_trip(tiny_folder, tmp_path):
    """A real checkpoint (Trainer state, cosine LambdaLR, head) loads with weights_only and scores the same."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    images = [Image.new("RGB", (60, 60), (40 * i, 90, 200 - 40 * i)) for i in range(4)]
    groups = [("red cat", images[:2]), ("blue dog", images[2:])]
    torch.manual_seed(0)
    module = MLLMRerankerModule(str(tiny_folder), MLLMSettings(head="mlp"), [("contrastive", 1.0)],
                                MLLMTraining(schedule="cosine", warmup_steps=1, lr=1e-2))
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last", every_n_train_steps=1)])
    trainer.fit(module, torch.utils.data.DataLoader(groups, batch_size=2, collate_fn=collate_groups))
    loaded = load_reranker_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert not loaded.training and loaded.score_mode == "logit" and loaded.head is not None
    queries = ["red cat", "red cat", "blue dog", "blue dog"]
    torch.testing.assert_close(loaded.score(queries, images), module.reranker.score(queries, images))
