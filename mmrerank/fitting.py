"""`mmrerank fit`: one `LightningCLI` subclass over every mmrerank module, and `train_missing`, which runs it for the
benchmark's rerankers that name a `FitRecipe` instead of a model.

A recipe is trained once into `$MMRERANK_CACHE/trained/<config>-<digest>/`, the digest taken over the config file's
text, the recipe's arguments and the first stage's identity, so a folder never answers for a training it did not
come from; `retrain` replaces it.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.cli import LightningCLI

from mmrerank.core import distributed
from mmrerank.core.deprecation import nest_renamed, warn_renamed
from mmrerank.core.io import (
    CHECKSUMS,
    atomic_write_json,
    cache_root,
    damaged_files,
    generate_folder_once,
    key_digest,
    require_free_space,
    write_checksums,
)
from mmrerank.core.progress import ProgressLines, SeedAfterCaches, on_terminal
from mmrerank.rerankers.rows import RerankerRows
from mmrerank.retrieval.first_stage import FirstStage

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # package data; the repository's configs/ links here
DONE = "fit.json"  # written last into a trained folder: the folder is whole


# The LightningModules and LightningDataModules a config names by short `class_path`, and the module holding each:
# only the ones a command names are imported (the MLLM's pull in transformers), before jsonargparse resolves them.
LIGHTNING_CLASSES = {
    "CLIPModule": "mmrerank.retrieval.module", "SyntheticDataModule": "mmrerank.retrieval.module",
    "EDJEModule": "mmrerank.rerankers.edje.module", "EDJEDataModule": "mmrerank.rerankers.edje.data",
    "MLLMRerankerModule": "mmrerank.rerankers.mllm.module", "ImageGroupsDataModule": "mmrerank.rerankers.mllm.data",
    "PageGroupsDataModule": "mmrerank.rerankers.mllm.data",
}


def import_named_classes(args: list[str] | None) -> None:
    """Import the modules of the `LIGHTNING_CLASSES` that `args` name (in a `--config` file or a flag), so their
    short `class_path` resolves."""
    import importlib
    import sys

    args = sys.argv[1:] if args is None else args
    text = []
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        value = arg if i and args[i - 1] == "--config" else value
        if value is not None and Path(value).is_file():
            text.append(Path(value).read_text())
        elif value is not None:  # a config given as YAML text
            text.append(value)
        text.append(arg)
    for name, module in LIGHTNING_CLASSES.items():
        if any(re.search(rf"\b{name}\b", t) for t in text):
            importlib.import_module(module)


class MMRerankCLI(LightningCLI):
    """Lightning's CLI over every mmrerank `LightningModule` and `LightningDataModule` (by `class_path`: a short
    name of `LIGHTNING_CLASSES`, or a full import path)."""

    def __init__(self, *args, announce_saved: bool = True, **kwargs) -> None:
        """`announce_saved`: print where the model went at the end (off where the caller moves it, and says so)."""
        given = kwargs.get("args")  # None: sys.argv; a dict of settings names its classes by full path
        import_named_classes(given if isinstance(given, list) else None if given is None else [])
        self.announce_saved = announce_saved  # read by `after_fit`, which runs inside `super().__init__`
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        with warnings.catch_warnings():  # `args` given while sys.argv holds the console script's (or a benchmark's)
            warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
            super().__init__(L.LightningModule, L.LightningDataModule, *args, subclass_mode_model=True,
                             subclass_mode_data=True, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        """Lightning's parse, after `migrate_args`: old flat module arguments still work (with a FutureWarning)
        and a nested `=null` stays None."""
        if args is None or isinstance(args, (list, tuple)):
            args = migrate_args(list(sys.argv[1:] if args is None else args))
        super().parse_arguments(parser, args)

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
        reason = nothing_saved(self.trainer, self.model)
        if reason:
            raise ValueError(f"this fit would train for {self.trainer.max_steps} steps and save nothing: {reason}")
        where, size = save_estimate(self.trainer, self.model)
        require_free_space(where, size, f"{type(self.model).__name__}'s saved model and checkpoints")

    def after_fit(self) -> None:
        """Say where the model went (the export folder, the checkpoints)."""
        if not self.trainer.is_global_zero or not self.announce_saved:
            return
        saved = [str(Path(p).absolute()) for p in saved_paths(self.trainer, self.model)]
        print("saved: " + ("; ".join(saved) if saved else "nothing (no export_dir, no checkpoint written)"),
              flush=True)


def export_dir(model: L.LightningModule) -> str | None:
    """Where the module saves its trained model at the end of a fit (`export_dir`, an attribute of the modules
    that take config objects, else an init argument)."""
    return getattr(model, "export_dir", None) or getattr(model.hparams, "export_dir", None)


def nothing_saved(trainer: L.Trainer, model: L.LightningModule) -> str | None:
    """Why a fit of `max_steps` steps would provably save nothing (no `export_dir`, and no checkpoint callback that
    saves within those steps), or None. A checkpoint that waits for a validation saves nothing when the first
    validation (`val_check_interval` steps) comes after `max_steps`: Lightning does not validate at the stop."""
    steps = trainer.max_steps
    if export_dir(model) or steps is None or steps < 0:
        return None
    if not trainer.checkpoint_callbacks:
        return ("no export_dir and checkpointing is off; set --trainer.enable_checkpointing=true or the model's "
                "export_dir")
    interval = trainer.val_check_interval
    for callback in trainer.checkpoint_callbacks:
        if callback.save_last or callback._train_time_interval:
            return None
        if callback._every_n_train_steps and callback._every_n_train_steps <= steps:
            return None
        on_epoch_end = callback._save_on_train_epoch_end
        if on_epoch_end is None:  # Lightning's own choice (`ModelCheckpoint._should_save_on_train_epoch_end`)
            on_epoch_end = trainer.limit_val_batches == 0 or (isinstance(interval, float) and interval == 1.0)
        if on_epoch_end or not isinstance(interval, int) or interval <= steps:
            return None
    return (f"its checkpoint is written at validation, every {interval} steps, after the last step "
            f"({steps}); pass --trainer.val_check_interval={steps} (or less), --trainer.callbacks.save_last=true, "
            "or more --trainer.max_steps")


def saved_paths(trainer: L.Trainer, model: L.LightningModule) -> list[Path]:
    """The export folder and the checkpoint files a finished fit wrote."""
    export = export_dir(model)
    out = [Path(export)] if export and Path(export).exists() else []
    for callback in trainer.checkpoint_callbacks:
        for path in (callback.best_model_path, callback.last_model_path):
            if path and Path(path).is_file() and Path(path) not in out:
                out.append(Path(path))
    return out


def save_estimate(trainer: L.Trainer, model: L.LightningModule) -> tuple[Path, int]:
    """Where a fit writes and about how many bytes: the weights once for the export, three times (weights and
    Adam's two moments) per checkpoint file kept (one, or `save_top_k`)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    kept = sum(max(c.save_top_k, 1) + bool(c.save_last) for c in trainer.checkpoint_callbacks)
    export = export_dir(model)
    return Path(export or trainer.default_root_dir), weights * (bool(export) + 3 * kept)


def migrate_args(args: list[str]) -> list[str]:
    """`mmrerank fit` arguments as this version reads them.

    - A module's 0.1 flat init args (`--model.init_args.lr=...`, or `lr:` in a `--config` file) move to where the
      module takes them now (`training.lr`), each with a FutureWarning: a module class lists them by a
      `migrate_flat_args(flat: dict, where: str) -> dict` static method (EDJE's: `edje.module.migrate_flat_args`).
    - A flag two levels under `init_args` set to null (`--model.init_args.config.num_image_tokens=null`) is passed
      as `--model.init_args.config={"num_image_tokens": null}`: jsonargparse (4.53) reads the first form's null as
      the string "None" (an error for an int, silently "None" for a str), the second merges into the config.
    """
    out: list[str] = []
    module, losses = _model_class(args), None
    data, data_moved = _model_class(args, "data"), {}
    i = 0
    while i < len(args):
        arg = args[i]
        flag, value, step = _split_flag(args, i)
        if flag == "--config" and value is not None:
            value, found_losses = _migrated_config(value, module, data)
            losses = found_losses if found_losses is not None else losses
            out.append(f"--config={value}")
        elif flag is not None and value is not None and flag.startswith(MODEL_ARGS):
            key = flag[len(MODEL_ARGS):]
            if key == "loss_functions":
                losses = yaml.safe_load(value)
            migrate = getattr(module, "migrate_flat_args", None)
            head, _, rest = key.partition(".")
            renamed = getattr(module, "LEGACY_PATHS", {}).get(head)
            if rest and renamed:  # a field of a renamed group (`tiny_vocab_pages.seed` -> `tiny.vocab_pages.seed`)
                warn_renamed(head, renamed, f"--{flag[2:]}")
                out.append(_null_safe(f"{MODEL_ARGS}{renamed}.{rest}", value))
            elif migrate is not None and "." not in key and key != "loss_functions":
                flat = {key: yaml.safe_load(value)}
                # an old loss flag edits the loss list given so far (by the config file or an earlier flag)
                moved = migrate({**flat, "loss_functions": losses} if losses else flat, f"--{flag[2:]}")
                if moved.get("loss_functions") == losses:
                    moved.pop("loss_functions", None)  # not a loss flag: the list stays as given
                    flat.pop("loss_functions", None)
                losses = moved.get("loss_functions", losses)
                out += [f"{MODEL_ARGS}{k}={json.dumps(v)}" for k, v in moved.items()] if moved != flat \
                    else [_null_safe(flag, value)]
            else:
                out.append(_null_safe(flag, value))
        elif flag is not None and value is not None and flag.startswith(DATA_ARGS) \
                and flag[len(DATA_ARGS):] in getattr(data, "LEGACY_PATHS", {}):
            # a renamed data-module key: moved into its group, given once at the end
            flat = {flag[len(DATA_ARGS):]: yaml.safe_load(value)}
            for group, section in nest_renamed(flat, data.LEGACY_PATHS, f"--{flag[2:]}").items():
                data_moved.setdefault(group, {}).update(section)
        elif flag is not None and value is not None:
            out.append(_null_safe(flag, value))
        else:
            out.append(arg)
        i += step
    return out + [f"{DATA_ARGS}{group}={json.dumps(section)}" for group, section in data_moved.items()]


MODEL_ARGS = "--model.init_args."
DATA_ARGS = "--data.init_args."


def _split_flag(args: list[str], i: int) -> tuple[str | None, str | None, int]:
    """(flag, value, tokens used) of `--flag=value` or `--flag value` at `args[i]`; (None, None, 1) otherwise."""
    arg = args[i]
    if not arg.startswith("--"):
        return None, None, 1
    if "=" in arg:
        flag, value = arg.split("=", 1)
        return flag, value, 1
    if i + 1 < len(args) and not args[i + 1].startswith("--"):
        return arg, args[i + 1], 2
    return None, None, 1


def _null_safe(flag: str, value: str) -> str:
    """`--a.init_args.b.c=null` -> `--a.init_args.b={"c": null}` (see `migrate_args`); any other flag as given."""
    head, sep, rest = flag.partition(".init_args.")
    if sep and "." in rest and yaml.safe_load(value) is None:
        group, *path = rest.split(".")
        nested: object = None
        for key in reversed(path):
            nested = {key: nested}
        return f"{head}{sep}{group}={json.dumps(nested)}"
    return f"{flag}={value}"


def _model_class(args: list[str], part: str = "model") -> type | None:
    """The class the arguments name for `part` (`model` or `data`: the last `--model=` / `class_path:` found), or
    None."""
    path = None
    for i in range(len(args)):
        flag, value, _ = _split_flag(args, i)
        if flag == "--config" and value and Path(packaged_config(value)).is_file():
            model = (yaml.safe_load(Path(packaged_config(value)).read_text()) or {}).get(part)
            path = model.get("class_path", path) if isinstance(model, dict) else path
        elif flag in (f"--{part}", f"--{part}.class_path") and value:
            path = value
    if path in LIGHTNING_CLASSES:  # a short class_path (`EDJEModule`)
        path = f"{LIGHTNING_CLASSES[path]}.{path}"
    if not path or "." not in path:
        return None
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None  # the parser names the bad class_path


def _migrated_config(value: str, module: type | None, data: type | None = None) -> tuple[str, list | None]:
    """A `--config` file as given, or (when its model or data init args hold 0.1 keys) migrated, as YAML text; and
    the `loss_functions` it sets (None: none)."""
    path = Path(packaged_config(value))
    if not path.is_file():
        return value, None
    config = yaml.safe_load(path.read_text()) or {}
    changed = False
    for part, cls in (("model", module), ("data", data)):
        init = config[part].get("init_args") if isinstance(config.get(part), dict) else None
        if not isinstance(init, dict):
            continue
        migrate = getattr(cls, "migrate_flat_args", None)
        if migrate is None and set(init) & set(getattr(cls, "LEGACY_PATHS", {})):
            migrate = partial(nest_renamed, paths=cls.LEGACY_PATHS)
        moved = migrate(init, where=str(path)) if migrate is not None else init
        changed |= moved != init
        config[part]["init_args"] = moved
    init = config["model"].get("init_args") if isinstance(config.get("model"), dict) else None
    losses = init.get("loss_functions") if isinstance(init, dict) else None
    return (yaml.safe_dump(config, sort_keys=False) if changed else str(path)), losses


def packaged_config(path: str) -> str:
    """`path`, or where it lies in the installed package's configs when it is not a file here: `--config
    configs/edje/synthetic.yaml` (or `edje/synthetic.yaml`) works from any folder and from a wheel."""
    if Path(path).exists():
        return path
    name = path[len("configs/"):] if path.startswith("configs/") else path
    return str(CONFIG_DIR / name) if (CONFIG_DIR / name).is_file() else path


def trained_folder(spec: RerankerRows, first_stage: FirstStage) -> Path:
    """Where `spec.fit` trains to: keyed by the config's text, the recipe's arguments and the first stage."""
    config = Path(packaged_config(spec.fit.config))
    if not config.is_file():
        raise FileNotFoundError(f"{type(spec).__name__}.fit.config: no config file {spec.fit.config}")
    key = {"config": config.read_text(), "args": spec.fit.args,
           "first_stage": first_stage.identity() if spec.fit_reads_first_stage else None}
    return cache_root() / "trained" / f"{config.parent.name}-{config.stem}-{key_digest(key)}"


def train_missing(specs: list[RerankerRows], first_stage: FirstStage, retrain: bool = False, progress: bool = True,
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
        if trains and progress and distributed.is_rank_zero():
            print(f"saved: {folder / 'model'}", flush=True)
        spec.use_trained(str(folder / "model"))


def train_once(spec: RerankerRows, folder: Path, first_stage: FirstStage, retrain: bool, progress: bool) -> None:
    """Fill `folder` by `fit` unless it is whole (rank 0 trains, in a process of its own under `torch.distributed`:
    a Trainer finding the process group would wait for the other ranks; they find the folder whole)."""
    # a folder of an older version, without checksums, is taken as it is
    damaged = damaged_files(folder / "model", folder / CHECKSUMS) if (folder / DONE).is_file() else None
    if damaged:
        warnings.warn(f"the trained {type(spec).__name__} at {folder} is damaged ({', '.join(damaged)} differ "
                      f"from {CHECKSUMS}): training it again", stacklevel=2)
        retrain = True
    if retrain and distributed.is_rank_zero() and folder.exists():
        shutil.rmtree(folder)

    def generate(tmp: Path) -> None:
        if distributed.world()[1] > 1:
            distributed.in_fresh_process(fit, spec, tmp, first_stage, progress)
        else:
            fit(spec, tmp, first_stage, progress)

    generate_folder_once(folder, DONE, generate)


def fit(spec: RerankerRows, folder: Path, first_stage: FirstStage, progress: bool) -> None:
    """`mmrerank fit --config <recipe> <args> <the spec's own args>`, in this process: the model is saved to
    `folder/model`, Lightning's own files (the resolved `config.yaml`) go to `folder/fit`."""
    args = ["fit", "--config", packaged_config(spec.fit.config), *spec.fit.args,
            *spec.fit_args(str(folder / "model"), str(first_stage.folder())),
            f"--trainer.default_root_dir={folder / 'fit'}", "--trainer.logger=false",
            "--trainer.enable_model_summary=false", *([] if progress else ["--trainer.enable_progress_bar=false"])]
    if progress:
        print(f"training {type(spec).__name__}: mmrerank {' '.join(args)}", flush=True)
    MMRerankCLI(args=args, announce_saved=False)  # trained in a temporary folder: `train_missing` names the final one
    write_checksums(folder / "model", folder / CHECKSUMS)  # verified each time the folder is reused
    atomic_write_json(folder / DONE, {"args": args})
