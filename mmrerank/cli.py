"""The `mmrerank` console script: Lightning's `fit | validate | test | predict`, the benchmarks (`benchmark`,
`precompute`, `scaling`) and the commands on a user's own files (`rerank`, `evaluate`, `index`, `search`).

Training goes through one `LightningCLI` subclass (`mmrerank fit --config configs/clip/synthetic.yaml`); the
extra subcommands parse their own arguments with jsonargparse, from the same kind of YAML files.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
import warnings

from jsonargparse import ActionConfigFile, ArgumentParser

from mmrerank.benchmark import benchmark
from mmrerank.commands import rerank, search
from mmrerank.commands.renamed import migrate_argv
from mmrerank.core import distributed
from mmrerank.core.device import resolve_device
from mmrerank.fitting import MMRerankCLI, packaged_config
from mmrerank.rerankers.edje.benchmark import precompute


def known_class_paths() -> str:
    """The short `class_path` names a config may use, by kind (for an unknown one's error)."""
    import mmrerank.datasets as sources
    from mmrerank.rerankers import family_rows

    def names(base) -> str:
        return ", ".join(n for n in sources.__all__ if n != base.__name__ and isinstance(getattr(sources, n), type)
                         and issubclass(getattr(sources, n), base))

    return (f"reranker rows: {', '.join(family_rows.__all__)}; image-text datasets: {names(sources.ImageTextSource)}; "
            f"page datasets: {names(sources.PageSource)}; image-to-image datasets: {names(sources.InstanceSource)} "
            "(or a full import path, e.g. mymodule.MyRows)")


class FunctionParser(ArgumentParser):
    """jsonargparse's parser, whose error for an unknown `class_path` also lists the known short names."""

    def error(self, message: str, ex: Exception | None = None):
        if "Expected a dot import path string" in message or "Import path" in message:
            message += f"\nunknown class_path; the known names are {known_class_paths()}"
        super().error(message, ex)


def function_parser(function, prog: str) -> ArgumentParser:
    """A jsonargparse parser of `function`'s arguments, plus `--config` for a YAML file of them."""
    parser = FunctionParser(prog=prog, description=function.__doc__.split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these arguments")
    parser.add_function_arguments(function, as_group=False)
    return parser


def parse_function_args(function, prog: str, argv: list[str]) -> dict:
    """The function's arguments, built; a bad value (an unknown split, measure or device, a negative depth) stops
    here with the reason, before anything is rendered or trained."""
    parser = function_parser(function, prog)
    config = parser.parse_args(migrate_argv(argv, prog))
    try:
        # `instantiate` since jsonargparse 4.49 (which warns on the old name); older releases have only the old one
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
        kwargs = instantiate(config).as_dict()
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


DEFAULT_BENCHMARK = "benchmark/synthetic.yaml"  # every family on the built-in benchmarks


def run_benchmark(argv: list[str]) -> None:
    """`mmrerank benchmark [--config F] [overrides]`; without `--config`, the packaged default config."""
    if not any(a == "--config" or a.startswith("--config=") for a in argv) and not {"-h", "--help"} & set(argv):
        argv = ["--config", packaged_config(DEFAULT_BENCHMARK), *argv]
    kwargs = parse_function_args(benchmark, "mmrerank benchmark", argv)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.fabric.utilities.seed"):
        logging.getLogger(name).addFilter(_not_benchmark_noise)
    start = time.perf_counter()
    with distributed.process_group():  # under torchrun: one group for the whole command
        report = benchmark(**kwargs)
        if not distributed.is_rank_zero():  # the same report on every rank: one prints it
            return
    print(report.to_markdown())
    print(f"Wrote {report.config['output_dir']}/report.json, report.md, success_at_k.png and summary.png "
          f"({time.perf_counter() - start:.0f} s in all).")


def run_precompute(argv: list[str]) -> None:
    kwargs = parse_function_args(precompute, "mmrerank precompute", argv)
    with distributed.process_group():  # under torchrun: every rank encodes a share of the images
        precompute(**kwargs)


def run_scaling(argv: list[str]) -> None:
    from mmrerank.scaling.cli import main as scaling_main

    scaling_main(argv)


def run_rerank(argv: list[str]) -> None:
    """`mmrerank rerank`: the reranker is built only after the run's ids are checked against the files, so its
    `--reranker` value (a class path with init args) is parsed here but not instantiated."""
    parser = function_parser(rerank.rerank, "mmrerank rerank")
    kwargs = parser.parse_args(migrate_argv(argv, "mmrerank rerank")).as_dict()
    kwargs.pop("config", None)
    try:
        resolve_device(kwargs["device"])
    except RuntimeError as err:
        parser.error(f"--device {kwargs['device']!r}: {err}")
    with distributed.process_group():  # under torchrun: every rank reranks a share of the queries
        _stop_on_input_error(parser, rerank.rerank, kwargs)


def run_evaluate(argv: list[str]) -> None:
    _stop_on_input_error(None, search.evaluate, parse_function_args(search.evaluate, "mmrerank evaluate", argv))


def run_index(argv: list[str]) -> None:
    kwargs = parse_function_args(search.index, "mmrerank index", argv)
    with distributed.process_group():  # under torchrun: every rank encodes a share of the corpus
        _stop_on_input_error(None, search.index, kwargs)


def run_search(argv: list[str]) -> None:
    _stop_on_input_error(None, search.search, parse_function_args(search.search, "mmrerank search", argv))


def _stop_on_input_error(parser: ArgumentParser | None, function, kwargs: dict) -> None:
    """`function(**kwargs)`; an input it refuses (a missing file or id, a bad line) ends the command with its message
    and exit status 2 instead of a traceback."""
    try:
        function(**kwargs)
    except (FileNotFoundError, ValueError) as err:
        print(f"mmrerank: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


# One line each, in `mmrerank --help`: what a command is for.
SUBCOMMANDS = {
    "benchmark": (run_benchmark, "run a benchmark config: first stage, rerankers, report (default: every family on "
                                 "the built-in synthetic benchmarks)"),
    "precompute": (run_precompute, "write an EDJE token store of a dataset's images, for fast reranking"),
    "scaling": (run_scaling, "the scaling-law study: sweep, fit, report"),
    "rerank": (run_rerank, "rerank your own run file (TREC / JSONL) over your queries and corpus, resumably"),
    "evaluate": (run_evaluate, "score a TREC run file against TREC qrels"),
    "index": (run_index, "encode a folder of images / pages / texts with a first stage into a saved index"),
    "search": (run_search, "search a saved index with new queries and write a TREC run"),
}
LIGHTNING = {
    "fit": "train a model from a config (e.g. --config configs/clip/synthetic.yaml)",
    "validate": "run a model's validation loop",
    "test": "run a model's test loop",
    "predict": "run a model's prediction loop",
}


def overview() -> str:
    """`mmrerank --help`: every subcommand, one line each."""
    width = max(map(len, [*SUBCOMMANDS, *LIGHTNING]))
    lines = ["usage: mmrerank <command> [options]   (mmrerank <command> --help for a command's options)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {line}" for name, (_, line) in SUBCOMMANDS.items()]
    lines += [f"  {name:<{width}}  {line}" for name, line in LIGHTNING.items()]
    return "\n".join(lines)


# Lines third-party code prints that tell a user nothing about their run: Lightning's advert for its cloud logger,
# and open_clip's "initialized randomly" for tiny models whose weights are loaded right after.
NOISE = ("try installing [litlogger]", "No pretrained weights loaded for model 'mmrerank-")
# Lightning's set-up lines, repeated by every training a benchmark runs; the stage's own progress lines say more
BENCHMARK_NOISE = ("GPU available:", "TPU available:", "HPU available:", "Automatic Mixed Precision", "Seed set to",
                   "`Trainer.fit` stopped")


def _not_noise(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in NOISE)


def _warnings_and_worse(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def _not_benchmark_noise(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in BENCHMARK_NOISE)


def quiet_third_party() -> None:
    """Drop the `NOISE` log lines (a filter on the loggers that emit them; everything else passes). Idempotent:
    a logger holds a given filter once, however often `main` runs in a process."""
    for name in ("lightning.pytorch.utilities.rank_zero", ""):  # "": the root logger, which open_clip logs on
        logging.getLogger(name).addFilter(_not_noise)
    # bm25s sets its logger to DEBUG when imported (later, lazily): a filter outlasts that, a level would not
    logging.getLogger("bm25s").addFilter(_warnings_and_worse)
    # Lightning's own use of a deprecated torch pytree API, not the user's
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def with_packaged_configs(argv: list[str]) -> list[str]:
    """`argv` with every `--config` value resolved by `packaged_config`."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + packaged_config(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = packaged_config(out[i + 1])
    return out


SIGTERM_STATUS = 128 + signal.SIGTERM  # 143: what a shell reports for a process SIGTERM ended


class Terminated(SystemExit):
    """SIGTERM received: unwinds like an error (partial folders and temporary files are removed on the way out),
    then exits with status 143, so a scheduler (SLURM sends SIGTERM before SIGKILL) records a failure."""

    def __init__(self) -> None:
        super().__init__(SIGTERM_STATUS)


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    argv = with_packaged_configs(sys.argv[1:] if argv is None else argv)
    quiet_third_party()
    # Lightning composes the handler found at `fit` with its own (which only sets a flag and later raises its
    # `SIGTERMException`, a SystemExit without a code: status 0); ours raises at once, outside training too
    main_thread = threading.current_thread() is threading.main_thread()  # only there can a handler be set
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(overview())
        elif argv[0] in SUBCOMMANDS:
            SUBCOMMANDS[argv[0]][0](argv[1:])
        else:
            MMRerankCLI(args=argv)
    except SystemExit as stop:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(stop, SIGTERMException) and not isinstance(stop, Terminated):
            raise Terminated() from stop
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
