"""Analysis of attack outcomes: per-image rows, categories, rates with bootstrap intervals, transfer."""
from advprior.analysis.categories import ADVERSARIAL_CATEGORIES, CATEGORIES, categorize, categorize_frame
from advprior.analysis.outcomes import (
    DERIVED_COLUMNS,
    OUTCOME_COLUMNS,
    OUTCOME_DTYPES,
    STORED_COLUMNS,
    concat_outcomes,
    derive_outcomes,
    empty_outcomes,
    outcome_rows,
    read_outcomes,
    write_outcomes,
)
from advprior.analysis.rates import attack_summary, bootstrap_ci, category_counts, format_eps, metric_dict
from advprior.analysis.similarity import hierarchy_close, weight_similarity_close
from advprior.analysis.transfer import TRANSFER_COLUMNS, pivot, transfer_matrix

__all__ = [
    "ADVERSARIAL_CATEGORIES", "CATEGORIES", "DERIVED_COLUMNS", "OUTCOME_COLUMNS", "OUTCOME_DTYPES",
    "STORED_COLUMNS", "TRANSFER_COLUMNS", "attack_summary", "bootstrap_ci", "categorize", "categorize_frame",
    "category_counts", "concat_outcomes", "derive_outcomes", "empty_outcomes", "format_eps", "hierarchy_close",
    "metric_dict", "outcome_rows", "pivot", "read_outcomes", "transfer_matrix", "weight_similarity_close",
    "write_outcomes",
]
