"""The `mmrerank` console script: Lightning's `fit | validate | test | predict` plus `benchmark` and `precompute`.

Training goes through one `LightningCLI` subclass (`mmrerank fit --config configs/clip/synthetic.yaml`); the
extra subcommands parse their own arguments with jsonargparse, from the same kind of YAML files.
"""

from __future__ import annotations

import logging
import sys
import time

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.cli import LightningCLI

from mmrerank.benchmark import benchmark
from mmrerank.core import distributed
from mmrerank.core.progress import ProgressLines, on_terminal
from mmrerank.rerankers.edje.benchmark import precompute
from mmrerank.retrieval.clip import resolve_device


class MMRerankCLI(LightningCLI):
    """Lightning's CLI over every mmrerank `LightningModule` and `LightningDataModule` (by `class_path`)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(L.LightningModule, L.LightningDataModule, *args, subclass_mode_model=True,
                         subclass_mode_data=True, **kwargs)

    def before_fit(self) -> None:
        """In a log file (stdout not a terminal) Lightning's bar shows only at the end: add whole progress lines."""
        if not on_terminal() and self.trainer.progress_bar_callback is not None:
            self.trainer.callbacks.append(ProgressLines(type(self.model).__name__))


def function_parser(function, prog: str) -> ArgumentParser:
    """A jsonargparse parser of `function`'s arguments, plus `--config` for a YAML file of them."""
    parser = ArgumentParser(prog=prog, description=function.__doc__.split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these arguments")
    parser.add_function_arguments(function, as_group=False)
    return parser


def parse_function_args(function, prog: str, argv: list[str]) -> dict:
    """The function's arguments, built; a bad value (an unknown split, measure or device, a negative depth) stops
    here with the reason, before anything is rendered or trained."""
    parser = function_parser(function, prog)
    config = parser.parse_args(argv)
    try:
        kwargs = parser.instantiate_classes(config).as_dict()
    except (ValueError, TypeError, RuntimeError) as err:
        parser.error(str(root_cause(err)))
    if "device" in kwargs:
        try:
            resolve_device(kwargs["device"])
        except RuntimeError as err:
            parser.error(f"--device {kwargs['device']!r}: {err}")
    kwargs.pop("config", None)
    return kwargs


def root_cause(err: BaseException) -> BaseException:
    """The first error of a chain (jsonargparse wraps a constructor's `ValueError` in its own)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def benchmark_parser() -> ArgumentParser:
    return function_parser(benchmark, "mmrerank benchmark")


def run_benchmark(argv: list[str]) -> None:
    kwargs = parse_function_args(benchmark, "mmrerank benchmark", argv)
    start = time.perf_counter()
    with distributed.process_group():  # under torchrun: one group for the whole command
        report = benchmark(**kwargs)
        if not distributed.is_rank_zero():  # the same report on every rank: one prints it
            return
    print(report.to_markdown())
    print(f"Wrote {report.config['output_dir']}/report.json, report.md and success_at_k.png "
          f"({time.perf_counter() - start:.0f} s in all).")


def run_precompute(argv: list[str]) -> None:
    kwargs = parse_function_args(precompute, "mmrerank precompute", argv)
    with distributed.process_group():  # under torchrun: every rank encodes a share of the images
        precompute(**kwargs)


def run_scaling(argv: list[str]) -> None:
    from mmrerank.scaling.cli import main as scaling_main

    scaling_main(argv)


SUBCOMMANDS = {"benchmark": run_benchmark, "precompute": run_precompute, "scaling": run_scaling}


# Lines third-party code prints that tell a user nothing about their run: Lightning's advert for its cloud logger,
# and open_clip's "initialized randomly" for tiny models whose weights are loaded right after.
NOISE = ("try installing [litlogger]", "No pretrained weights loaded for model 'mmrerank-")


def _not_noise(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in NOISE)


def quiet_third_party() -> None:
    """Drop the `NOISE` log lines (a filter on the loggers that emit them; everything else passes). Idempotent:
    a logger holds a given filter once, however often `main` runs in a process."""
    for name in ("lightning.pytorch.utilities.rank_zero", ""):  # "": the root logger, which open_clip logs on
        logging.getLogger(name).addFilter(_not_noise)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    quiet_third_party()
    if argv and argv[0] in SUBCOMMANDS:
        SUBCOMMANDS[argv[0]](argv[1:])
    else:
        MMRerankCLI(args=argv)


if __name__ == "__main__":
    main()
