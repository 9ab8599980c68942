"""One experiment: :func:`softmaxlab.train.fit`, the feature maps, then the report.

What ``softmaxlab run`` and ``softmaxlab resume`` do, and each run of a sweep or the demo:
the training writes the run directory (config, epoch records, weights, summary); a hook draws
the feature maps of the first validation image into ``figures/feature_maps.png`` before the
summary marks the run finished; then the run's ``report.html`` / ``report.md`` are written.
A diverged run still gets its report (showing it as diverged, with its curves up to then); a
finished run that is returned as it was keeps the report it has.

In a notebook::

    from softmaxlab import load_config, run_experiment
    result = run_experiment(load_config(None, ["train.epochs=2"]), "runs/try")
    result.report  # runs/try/report.html
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

from softmaxlab import runs, train
from softmaxlab.config import Config, load_run_config
from softmaxlab.distributed import env_world
from softmaxlab.errors import DivergedError, UserError
from softmaxlab.progress import Progress
from softmaxlab.report.build import HTML_FILE, write_report
from softmaxlab.report.figures import feature_map_figure, save_png
from softmaxlab.train import FitResult, Hook

#: The feature maps a run draws, under its figures/ folder.
FEATURE_MAPS = Path("figures") / "feature_maps.png"
#: Channels drawn per block in that figure.
FEATURE_MAP_CHANNELS = 16


class FeatureMapsHook(Hook):
    """Draws ``figures/feature_maps.png`` from the maps the training computed, before the run is
    marked finished (so a finished run has its figure)."""

    def on_run_finished(self, result: FitResult) -> None:
        if result.feature_maps:
            names, maps = zip(*result.feature_maps, strict=True)
            save_png(feature_map_figure(list(maps), list(names), FEATURE_MAP_CHANNELS), result.run_dir / FEATURE_MAPS)


def run_experiment(cfg: Config, out_dir: str | Path | None = None, **fit_options: Any) -> FitResult:
    """Train ``cfg`` (:func:`~softmaxlab.train.fit`, with its keyword options: ``overwrite``,
    ``resume``, ``progress``, ``data``, ``hooks``), drawing the feature maps before the run is
    marked finished, then write the run's report (``report.figures`` says whether it has
    figures); returns the FitResult with its ``report``. A finished run returned as it was
    keeps its report (one is written where it has none).

    Raises:
        UserError: bad input (nothing written).
        DivergedError: the loss became non-finite; the run's summary and report say so.
    """
    hooks = [*fit_options.pop("hooks", ()), FeatureMapsHook()]
    with contextlib.ExitStack() as lock:
        if out_dir is not None and env_world().is_main:  # the run and its report: one writer
            lock.enter_context(runs.lock_dir(out_dir))
        return _run_and_report(cfg, out_dir, hooks, fit_options)


def _run_and_report(cfg: Config, out_dir: str | Path | None, hooks: list[Hook], fit_options: Any) -> FitResult:
    try:
        result = train.fit(cfg, out_dir, hooks=hooks, **fit_options)
    except DivergedError as exc:
        if exc.run_dir is not None and env_world().is_main:
            write_run_report(exc.run_dir, cfg.report.figures)
        raise
    if not env_world().is_main:  # under torchrun, rank 0 writes the files
        return result
    report = result.run_dir / HTML_FILE
    if result.resumed_finished and report.is_file():
        result.report = report
    else:
        result.report = write_run_report(result.run_dir, cfg.report.figures)
    return result


def resume_experiment(run_dir: str | Path, progress: Progress | None = None) -> FitResult:
    """Continue the interrupted run in ``run_dir`` with its own ``config.yaml`` (also one an
    earlier version wrote), then its feature maps and report.

    Raises:
        UserError: no config.yaml there, a finished run (nothing to resume), a bad checkpoint.
    """
    cfg = load_run_config(run_dir)
    return run_experiment(cfg, run_dir, resume="required", progress=progress)


def write_run_report(directory: Path, figures: bool, what: str = "run") -> Path | None:
    """``report.html`` and ``report.md`` of a run (or of the directory of runs that ``what``
    names, e.g. a sweep), from its files; returns the HTML's path. A report that cannot be
    written is a warning, not a lost run: ``softmaxlab report DIR`` writes it later."""
    try:
        write_report(directory, figures=figures)
    except UserError as exc:
        warnings.warn(f"the {what}'s report was not written: {exc}", stacklevel=2)
        return None
    return directory / HTML_FILE
