"""Scaling laws for reranking: fits, bootstrap intervals, forecasts and their report, and the sweep machinery."""

from mmrerank.scaling.bootstrap import BootstrapResult, bootstrap
from mmrerank.scaling.fits import JointLaw, PowerLaw, fit_joint_law, fit_power_law
from mmrerank.scaling.kaplan import KaplanLaw, fit_kaplan

__all__ = ["BootstrapResult", "JointLaw", "KaplanLaw", "PowerLaw", "bootstrap", "fit_joint_law", "fit_kaplan",
           "fit_power_law"]
