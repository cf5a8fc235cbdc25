"""`mmrerank fit`: one `LightningCLI` subclass over every mmrerank module, and `train_missing`, which runs it for the
benchmark's rerankers that name a `FitRecipe` instead of a model.

A recipe is trained once into `$MMRERANK_CACHE/trained/<config>-<digest>/`, the digest taken over the config file's
text, the recipe's arguments and the first stage's identity, so a folder never answers for a training it did not
come from; `retrain` replaces it.
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from mmrerank.core import distributed
from mmrerank.core.io import atomic_write_json, cache_root, generate_folder_once, key_digest
from mmrerank.core.progress import ProgressLines, SeedAfterCaches, on_terminal
from mmrerank.rerankers.spec import RerankerSpec
from mmrerank.retrieval.first_stage import FirstStage

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # package data; the repository's configs/ links here
DONE = "fit.json"  # written last into a trained folder: the folder is whole


class MMRerankCLI(LightningCLI):
    """Lightning's CLI over every mmrerank `LightningModule` and `LightningDataModule` (by `class_path`)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        with warnings.catch_warnings():  # `args` given while sys.argv holds the console script's (or a benchmark's)
            warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
            super().__init__(L.LightningModule, L.LightningDataModule, *args, subclass_mode_model=True,
                             subclass_mode_data=True, **kwargs)

    def before_fit(self) -> None:
        """Re-seed after the caches (`SeedAfterCaches`: same seed, same weights, whichever caches were filled). In a
        log file (stdout not a terminal) Lightning's bar would show only once, at the end: whole progress lines with
        an ETA take its place."""
        seed = self._get(self.config, "seed_everything")  # an int once Lightning has seeded (True: drawn)
        if isinstance(seed, int) and not isinstance(seed, bool):
            self.trainer.callbacks.append(SeedAfterCaches(seed))
        bar = self.trainer.progress_bar_callback
        if bar is not None and not on_terminal():
            self.trainer.callbacks.remove(bar)
            self.trainer.callbacks.append(ProgressLines(type(self.model).__name__))


def packaged_config(path: str) -> str:
    """`path`, or where it lies in the installed package's configs when it is not a file here: `--config
    configs/edje/synthetic.yaml` (or `edje/synthetic.yaml`) works from any folder and from a wheel."""
    if Path(path).exists():
        return path
    name = path[len("configs/"):] if path.startswith("configs/") else path
    return str(CONFIG_DIR / name) if (CONFIG_DIR / name).is_file() else path


def trained_folder(spec: RerankerSpec, first_stage: FirstStage) -> Path:
    """Where `spec.fit` trains to: keyed by the config's text, the recipe's arguments and the first stage."""
    config = Path(packaged_config(spec.fit.config))
    if not config.is_file():
        raise FileNotFoundError(f"{type(spec).__name__}.fit.config: no config file {spec.fit.config}")
    key = {"config": config.read_text(), "args": spec.fit.args,
           "first_stage": first_stage.identity() if spec.fit_reads_first_stage else None}
    return cache_root() / "trained" / f"{config.parent.name}-{config.stem}-{key_digest(key)}"


def train_missing(specs: list[RerankerSpec], first_stage: FirstStage, retrain: bool = False, progress: bool = True,
                  timings: dict[str, float] | None = None) -> None:
    """Run every spec's `fit` recipe whose folder is not trained yet (all of them with `retrain`), then point the
    spec at its folder. `first_stage` must be built already (its folder is what the recipes read)."""
    for spec in specs:
        if spec.fit is None:
            continue
        folder = trained_folder(spec, first_stage)
        trains = retrain or not (folder / DONE).is_file()
        start = time.perf_counter()
        distributed.on_rank_zero_first(lambda spec=spec, folder=folder: train_once(spec, folder, first_stage, retrain,
                                                                                   progress))
        if timings is not None and trains:
            timings[f"{type(spec).__name__} training"] = time.perf_counter() - start
        spec.use_trained(str(folder / "model"))


def train_once(spec: RerankerSpec, folder: Path, first_stage: FirstStage, retrain: bool, progress: bool) -> None:
    """Fill `folder` by `fit` unless it is whole (rank 0 trains, in a process of its own under `torch.distributed`:
    a Trainer finding the process group would wait for the other ranks; they find the folder whole)."""
    if retrain and distributed.is_rank_zero() and folder.exists():
        shutil.rmtree(folder)

    def generate(tmp: Path) -> None:
        if distributed.world()[1] > 1:
            distributed.in_fresh_process(fit, spec, tmp, first_stage, progress)
        else:
            fit(spec, tmp, first_stage, progress)

    generate_folder_once(folder, DONE, generate)


def fit(spec: RerankerSpec, folder: Path, first_stage: FirstStage, progress: bool) -> None:
    """`mmrerank fit --config <recipe> <args> <the spec's own args>`, in this process: the model is saved to
    `folder/model`, Lightning's own files (the resolved `config.yaml`) go to `folder/fit`."""
    args = ["fit", "--config", packaged_config(spec.fit.config), *spec.fit.args,
            *spec.fit_args(str(folder / "model"), str(first_stage.folder())),
            f"--trainer.default_root_dir={folder / 'fit'}", "--trainer.logger=false",
            "--trainer.enable_model_summary=false", *([] if progress else ["--trainer.enable_progress_bar=false"])]
    if progress:
        print(f"training {type(spec).__name__}: mmrerank {' '.join(args)}", flush=True)
    MMRerankCLI(args=args)
    atomic_write_json(folder / DONE, {"args": args})
