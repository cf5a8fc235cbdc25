"""Same seed, same numbers, cached or not: `mmrerank fit` of EDJE trains the same weights whether the hard-negatives
(and patch-token) caches were cold or already filled by an earlier run."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from mmrerank.cli import main
from mmrerank.retrieval.clip import CLIPEncoder

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "edje" / "synthetic.yaml")


def fit_edje(root: Path, first_stage: Path, config) -> dict:
    data = "--data.init_args."
    syn = [arg for split in ("train", "val") for arg in
           (f"{data}{split}=Synthetic", f"{data}{split}.init_args.split={split}",
            *(f"{data}{split}.init_args.synthetic.{k}={getattr(config, k)}" for k in
              ("root", "seed", "train_images", "val_images", "test_images")))]
    model = "--model.init_args."
    main(["fit", "--config", CONFIG, f"--trainer.default_root_dir={root}", "--trainer.max_steps=4",
          "--trainer.val_check_interval=4", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
          f"{model}vision_checkpoint={first_stage}", f"{model}text_checkpoint={first_stage}",
          f'{model}joint={{"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, '
          f'"intermediate_size": 32, "hidden_dropout_prob": 0.1}}', f"{model}num_image_tokens=4",
          f"{model}adapter_heads=2", f"{model}adapter_mlp_ratio=1", f"{model}warmup_steps=1",
          f"{model}export_dir={root / 'model'}", f"{data}batch_size=4", f"{data}n=3", f"{data}hard=2",
          f"{data}pool=4", f"{data}mined=8", f"{data}curriculum_steps=2", f"{data}first_stage.checkpoint={first_stage}",
          *syn])
    return load_file(str(root / "model" / "model.safetensors"))


@pytest.mark.slow
def test_edje_fit_trains_the_same_weights_with_a_cold_or_a_warm_cache(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("MMRERANK_CACHE", str(tmp_path / "cache"))
    first_stage = tmp_path / "fs"
    CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(first_stage)
    cold = fit_edje(tmp_path / "cold", first_stage, tiny_config)
    assert any((tmp_path / "cache" / "negatives").iterdir())  # the second run reads the mined negatives
    warm = fit_edje(tmp_path / "warm", first_stage, tiny_config)
    assert cold.keys() == warm.keys()
    changed = [k for k in cold if not (cold[k] == warm[k]).all()]
    assert changed == [], changed[:5]
