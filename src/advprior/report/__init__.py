"""Report figures (matplotlib, Agg)."""
from advprior.report.figures import (
    category_grid,
    confidence_histograms,
    rate_vs_eps,
    save_figure,
    transfer_heatmap,
)

__all__ = ["category_grid", "confidence_histograms", "rate_vs_eps", "save_figure", "transfer_heatmap"]
