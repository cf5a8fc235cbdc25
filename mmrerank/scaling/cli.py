"""`mmrerank scaling fit | sweep`: fit the scaling laws of a results JSONL, or run (or list) a sweep's grid points.

Registered in the console script as `SUBCOMMANDS["scaling"] = mmrerank.scaling.cli.main`.
"""

from __future__ import annotations

import argparse
import sys

from mmrerank.scaling.forecast import ForecastConfig


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mmrerank scaling", description=__doc__.split("\n\n")[0])
    sub = root.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit model, data and joint laws; write report.json, report.md and plots")
    fit.add_argument("--results", required=True, help="results JSONL of a sweep")
    fit.add_argument("--output-dir", required=True, help="where the report goes")
    fit.add_argument("--holdout", type=int, default=1, help="largest sizes held out of the model law")
    fit.add_argument("--holdout-checkpoints", type=int, default=1, help="last checkpoints held out per data law")
    fit.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the model law")
    fit.add_argument("--data-resamples", type=int, default=200, help="bootstrap resamples per data law")
    fit.add_argument("--level", type=float, default=0.9, help="central probability of the intervals")
    fit.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    fit.add_argument("--metrics", nargs="+", help="metrics to fit (default: all in the results)")
    fit.add_argument("--budgets", nargs="+", type=float, help="compute budgets params x examples to allocate")
    fit.add_argument("--calibration-laws", type=int, default=200,
                     help="seeded synthetic laws the interval coverage is measured on (0: no calibration)")
    fit.add_argument("--calibration-resamples", type=int, default=100, help="bootstrap resamples per such law")
    fit.add_argument("--noise-sd", type=float, default=0.005,
                     help="per-seed noise of those laws when the sweep has one seed (else the seeds' spread)")
    sweep = sub.add_parser("sweep", help="train the grid points of a sweep config that are not finished yet")
    sweep.add_argument("--config", required=True, help="sweep config YAML (see configs/scaling/sweep.yaml)")
    sweep.add_argument("--results", help="results JSONL (default: the config's `results`)")
    sweep.add_argument("--point", help="run only this grid point key")
    sweep.add_argument("--dry-run", action="store_true", help="print one command per unfinished point instead")
    sweep.add_argument("--workers", type=int, default=1,
                       help="train the points in this many processes of one thread each (default 1: in this one)")
    return root


def run_fit(args: argparse.Namespace) -> None:
    from mmrerank.scaling.report import scaling_report, to_markdown

    if args.holdout < 1 or args.holdout_checkpoints < 1:
        raise SystemExit("--holdout and --holdout-checkpoints must be at least 1")
    cfg = ForecastConfig(holdout=args.holdout, holdout_checkpoints=args.holdout_checkpoints,
                         resamples=args.resamples, data_resamples=args.data_resamples, level=args.level,
                         seed=args.seed, metrics=args.metrics, budgets=args.budgets,
                         calibration_laws=args.calibration_laws, calibration_resamples=args.calibration_resamples,
                         noise_sd=args.noise_sd)
    report = scaling_report(args.results, args.output_dir, cfg)
    print(to_markdown(report).split("## Model law")[0].rstrip())
    print(f"\nWrote {args.output_dir}/report.json, report.md and {2 * len(report.metrics)} plots.")


def run_sweep_command(args: argparse.Namespace) -> None:
    from mmrerank.scaling.grid import commands, load_sweep_config, run_sweep

    config = load_sweep_config(args.config)
    if args.dry_run:
        for line in commands(args.config, config, args.results):
            print(line)
        return
    if args.workers != 1 and args.point is None:
        from mmrerank.scaling.runner import run_workers

        ran = run_workers(args.config, config, args.workers, args.results)
        print(f"Trained {len(ran)} grid point(s).")
        return
    from mmrerank.scaling.runner import trainer_for

    ran = run_sweep(config, args.results, trainer_for(config.trainer), only=args.point)
    print(f"Trained {len(ran)} grid point(s): {', '.join(ran) or 'none left'}.")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        {"fit": run_fit, "sweep": run_sweep_command}[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise SystemExit(f"mmrerank scaling {args.command}: {err}") from err


if __name__ == "__main__":
    main()
