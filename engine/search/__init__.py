"""Inference-time search: SearchParams, noisy/prior-sampled rollouts, and answer selection."""

from engine.search.params import SELECTORS, SearchParams, default_params
from engine.search.rollouts import StepOut, run_rollouts, search_step
from engine.search.selectors import Rows, Selection, select, selection_of

__all__ = [
    "SELECTORS",
    "Rows",
    "SearchParams",
    "Selection",
    "StepOut",
    "default_params",
    "run_rollouts",
    "search_step",
    "select",
    "selection_of",
]
