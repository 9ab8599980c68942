"""Reports: tables (and, later, plots and HTML) built from files on disk."""

from softmaxlab.report.markdown import format_mean_std, markdown_table

__all__ = ["format_mean_std", "markdown_table"]
