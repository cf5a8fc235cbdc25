"""Scaling laws for reranking: fits, bootstrap intervals, forecasts and their report, and the sweep machinery.

`mmrerank scaling fit` (`mmrerank.scaling.cli.main`) turns a sweep's results JSONL (schema in
`mmrerank.scaling.results`) into report.json, report.md and plots; `mmrerank scaling sweep` runs the grid of
`mmrerank.scaling.grid.SweepConfig` through a pluggable trainer.
"""

from mmrerank.scaling.bootstrap import BootstrapResult, bootstrap
from mmrerank.scaling.fits import JointLaw, PowerLaw, fit_joint_law, fit_power_law
from mmrerank.scaling.forecast import ForecastConfig
from mmrerank.scaling.grid import GridPoint, ModelSize, SweepConfig, grid_points, run_sweep
from mmrerank.scaling.kaplan import KaplanLaw, fit_kaplan
from mmrerank.scaling.report import build_report, scaling_report
from mmrerank.scaling.results import Evaluation, append_evaluation, read_evaluations

__all__ = ["BootstrapResult", "Evaluation", "ForecastConfig", "GridPoint", "JointLaw", "KaplanLaw", "ModelSize",
           "PowerLaw", "SweepConfig", "append_evaluation", "bootstrap", "build_report", "fit_joint_law", "fit_kaplan",
           "fit_power_law", "grid_points", "read_evaluations", "run_sweep", "scaling_report"]
