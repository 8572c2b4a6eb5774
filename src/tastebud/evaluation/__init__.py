"""Offline evaluation: ranking and rating metrics, the evaluation protocol, comparison reports, tuning.

Optuna and matplotlib are imported only when tuning or plotting, so importing this package stays light.
"""

from tastebud.evaluation.metrics import (
    RANKING_METRICS,
    catalog_coverage,
    f1_at_k,
    hit_rate_at_k,
    item_popularity,
    mae,
    map_at_k,
    mrr,
    ndcg_at_k,
    novelty,
    popularity_bias,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
    rmse,
)
from tastebud.evaluation.protocol import Report, bootstrap_ci, evaluate, fit_and_evaluate
from tastebud.evaluation.report import (
    Comparison,
    compare,
    run_evaluation,
    run_evaluation_files,
    split_from_files,
    write_comparison,
)
from tastebud.evaluation.tuning import SEARCH_SPACES, TuneResult, tune

__all__ = [
    "RANKING_METRICS",
    "SEARCH_SPACES",
    "Comparison",
    "Report",
    "TuneResult",
    "bootstrap_ci",
    "catalog_coverage",
    "compare",
    "evaluate",
    "f1_at_k",
    "fit_and_evaluate",
    "hit_rate_at_k",
    "item_popularity",
    "mae",
    "map_at_k",
    "mrr",
    "ndcg_at_k",
    "novelty",
    "popularity_bias",
    "precision_at_k",
    "ranking_metrics",
    "recall_at_k",
    "rmse",
    "run_evaluation",
    "run_evaluation_files",
    "split_from_files",
    "tune",
    "write_comparison",
]
