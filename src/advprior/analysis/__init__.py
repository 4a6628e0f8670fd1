"""Analysis of attack outcomes: per-image rows, categories, rates with Wilson/BCa intervals, paired
comparisons between models, transfer, and the claims aggregation across training seeds."""
from advprior.analysis.categories import ADVERSARIAL_CATEGORIES, CATEGORIES, categorize, categorize_frame
from advprior.analysis.compare import comparison_metrics, model_differences, transfer_gaps
from advprior.analysis.intervals import (
    Interval,
    bca_interval,
    paired_difference,
    rate_interval,
    t_interval,
    wilson_interval,
)
from advprior.analysis.outcomes import (
    OUTCOME_COLUMNS,
    OUTCOME_DTYPES,
    concat_outcomes,
    empty_outcomes,
    outcome_rows,
    read_outcomes,
    write_outcomes,
)
from advprior.analysis.rates import attack_summary, category_counts, format_eps, metric_dict
from advprior.analysis.similarity import hierarchy_close, weight_similarity_close
from advprior.analysis.transfer import TRANSFER_COLUMNS, pivot, transfer_matrix

__all__ = [
    "ADVERSARIAL_CATEGORIES", "CATEGORIES", "OUTCOME_COLUMNS", "OUTCOME_DTYPES", "TRANSFER_COLUMNS", "Interval",
    "attack_summary", "bca_interval", "categorize", "categorize_frame", "category_counts", "comparison_metrics",
    "concat_outcomes", "empty_outcomes", "format_eps", "hierarchy_close", "metric_dict", "model_differences",
    "outcome_rows", "paired_difference", "pivot", "rate_interval", "read_outcomes", "t_interval", "transfer_gaps",
    "transfer_matrix", "weight_similarity_close", "wilson_interval", "write_outcomes",
]
