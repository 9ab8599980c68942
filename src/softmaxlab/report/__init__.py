"""Reports built from files on disk: Markdown tables, figures, and the HTML / Markdown report
of a run or a directory of runs (:func:`write_report`, ``softmaxlab report DIR``)."""

from softmaxlab.report.build import build_report, write_report
from softmaxlab.report.markdown import format_mean_std, markdown_table

__all__ = ["build_report", "format_mean_std", "markdown_table", "write_report"]
