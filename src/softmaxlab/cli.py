"""The ``softmaxlab`` command line: thin wrappers that parse arguments and call the library.

Exit codes: 0 success, 1 anything unexpected, 2 bad input (one line on stderr saying what
is wrong and how to fix it, no traceback), 3 the run diverged (non-finite loss), 4 ``lint``
found an error-severity pitfall.

Each command imports the library inside its function: ``softmaxlab --help`` and a usage
error then answer without importing torch (seconds).
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NamedTuple, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from softmaxlab.errors import DivergedError, UserError, access_error

EXIT_OK, EXIT_UNEXPECTED, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_LINT_ERROR = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's code for Ctrl-C


def _flags_take_no_value() -> None:
    """Show flags (``--overwrite``, ``--json``, ``--help``) in ``--help`` without a ``<bool>``
    type: typer 0.2x prints one beside every flag, which reads as if the flag took a value
    (and ``--overwrite true`` then takes ``true`` for the config argument)."""
    shown = typer.core.TyperOption.display_type_rich

    def display_type_rich(self: typer.core.TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag and not self.secondary_opts else shown(self, ctx)

    typer.core.TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


if hasattr(typer.core, "TyperOption") and hasattr(typer.core.TyperOption, "display_type_rich"):
    _flags_take_no_value()

app = typer.Typer(
    name="softmaxlab",
    help="Study softmax in CNN image classifiers: output heads, softmax activations, calibration and cost.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out_console = Console()
err_console = Console(stderr=True)


F = TypeVar("F", bound=Callable[..., Any])


def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    """Warnings as one line on stderr (``warning: ...``), without the source file and line."""
    err_console.print(f"warning: {message}", highlight=False, soft_wrap=True, markup=False)


#: What continues an interrupted command, for the commands that checkpoint ({run}: the run's directory).
_RESUME_HINTS = {
    "run_cmd": ": softmaxlab resume {run} continues from the last checkpoint",
    "resume_cmd": ": the same command continues from the last checkpoint",
    "sweep_cmd": ": the same command continues the sweep from its runs' last checkpoints",
}


def _interrupt_hint(command: str, run_dir: Path | None) -> str:
    """What continues ``command`` after Ctrl-C: resuming the run in ``run_dir`` (named as
    written, quoted for the shell), or, before a run wrote anything, running it again."""
    hint = _RESUME_HINTS.get(command, "")
    if "{run}" not in hint:
        return hint
    if run_dir is None:
        return ": nothing to resume was written yet; run the same command again"
    return hint.format(run=shlex.quote(str(run_dir)))


def _exit_codes(command: F) -> F:
    """Map the library's exceptions to exit codes: UserError -> 2, DivergedError -> 3, an
    interrupt -> 130.

    The message is printed as one line on stderr, without a traceback.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return command(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"error: {exc}", highlight=False, soft_wrap=True, markup=False)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except OSError as exc:
            # Outside the library's atomic writers (which name the file they write): a full
            # disk or a path without permission is bad input too; any other OSError stays a
            # bug (exit 1).
            error = access_error(exc)
            if error is None:
                raise
            err_console.print(f"error: {error}", highlight=False, soft_wrap=True, markup=False)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except DivergedError as exc:
            err_console.print(f"diverged: {exc}", highlight=False, soft_wrap=True, markup=False)
            raise typer.Exit(EXIT_DIVERGED) from None
        except KeyboardInterrupt as exc:  # Ctrl-C; SIGTERM too during a sweep's local runs
            hint = _interrupt_hint(command.__name__, getattr(exc, "run_dir", None))
            err_console.print(f"interrupted{hint}", highlight=False, soft_wrap=True, markup=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def _progress():
    from softmaxlab.progress import ConsoleProgress

    return ConsoleProgress(err_console)


@app.command("run")
@_exit_codes
def run_cmd(
    config: Annotated[Path | None, typer.Argument(help="YAML experiment config (default: built-in defaults).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config value: section.key=value (repeatable)."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Dataset spec: shapes, cifar10, cifar100[:coarse], imagefolder:PATH or npz:PATH."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<name or timestamp>).")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a run already in the output directory.")
    ] = False,
) -> None:
    """Train one experiment and write its run directory."""
    from softmaxlab.config import load_config
    from softmaxlab.data import parse_data_spec
    from softmaxlab.experiment import run_experiment

    if config is not None and str(config).lower() in _FLAG_VALUES and not config.exists():
        raise UserError(
            f"config file {str(config)!r} does not exist; flags such as --overwrite take no value: drop the "
            f"{str(config)!r} after them"
        )
    # The spec's values are JSON-quoted so a path such as "2024" stays a string; --set wins.
    spec = [f"data.{k}={json.dumps(v)}" for k, v in parse_data_spec(data).items()] if data else []
    cfg = load_config(config, [*spec, *(set_ or [])], on_note=_note)
    # An interrupted run in the output directory is continued; a finished one is refused.
    result = run_experiment(
        cfg, out, overwrite=overwrite, progress=_progress(), resume=False if overwrite else "unfinished"
    )
    _print_run(result)


#: What a user may write after a flag, as if it took a value (`--overwrite true`).
_FLAG_VALUES = ("true", "false", "yes", "no", "on", "off", "1", "0")


def _note(text: str) -> None:
    """A note of the library as one line on stdout (``note: ...``; rank 0 only under torchrun):
    the options of a config file that a component chosen with ``--set`` does not declare."""
    from softmaxlab.distributed import env_world

    if env_world().is_main:
        out_console.print(f"note: {text}", highlight=False, soft_wrap=True, markup=False)


def _print_run(result: Any) -> None:
    from softmaxlab.distributed import env_world

    if not env_world().is_main:  # under torchrun, rank 0 speaks for every process
        return
    test = result.summary["test"]
    out_console.print(
        f"test accuracy {test['accuracy']:.4f}, NLL {test['nll']:.4f} "
        f"({result.summary['timing']['mean_epoch_seconds']:.1f} s/epoch)"
    )
    out_console.print(f"wrote {result.run_dir}", highlight=False, soft_wrap=True)
    if result.report is not None:
        out_console.print(f"report {result.report}", highlight=False, soft_wrap=True)


@app.command("resume")
@_exit_codes
def resume_cmd(
    run_dir: Annotated[Path, typer.Argument(help="An interrupted run directory (it holds config.yaml).")],
) -> None:
    """Continue an interrupted run from its last complete checkpoint (same final metrics as if never stopped)."""
    from softmaxlab.experiment import resume_experiment

    _print_run(resume_experiment(run_dir, progress=_progress()))


@app.command("demo")
@_exit_codes
def demo_cmd(
    out: Annotated[Path | None, typer.Option(help="Demo directory (default: runs/demo-<timestamp>).")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a demo already in the output directory.")
    ] = False,
) -> None:
    """Compare six output heads on the embedded data (3 seeds each, offline, under 3 minutes on 2 CPU cores)."""
    from softmaxlab.demo import run_demo

    result = run_demo(out, overwrite=overwrite, progress=_progress())
    out_console.print(result.table, highlight=False, soft_wrap=True)
    out_console.print(f"wrote {result.out_dir / 'demo.md'}", highlight=False, soft_wrap=True)
    out_console.print(f"report {result.report}", highlight=False, soft_wrap=True)


@app.command("evaluate")
@_exit_codes
def evaluate_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `softmaxlab run`.")],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Dataset spec with the run's classes: shapes, cifar10, cifar100[:coarse], imagefolder:PATH, npz:PATH.",
        ),
    ],
    split: Annotated[str, typer.Option(help="test, val or all (train + val + test).")] = "test",
    out: Annotated[
        Path | None, typer.Option(help="JSON file to write (default: RUN_DIR/evaluate-<dataset>-<split>.json).")
    ] = None,
) -> None:
    """Every metric of a trained run on a dataset with the same classes -> JSON, and a short table."""
    from softmaxlab.inference import (
        TABLE_METRICS,
        default_evaluation_path,
        evaluate_run,
        predictions_path,
        write_evaluation,
    )

    result = evaluate_run(run_dir, data, split, keep_predictions=True)
    path = write_evaluation(result, out or default_evaluation_path(run_dir, data, split))
    metrics = result["metrics"]
    table = Table(show_header=True, header_style="bold", box=None)
    for column, justify in (("metric", "left"), ("value", "right"), ("after temperature", "right")):
        table.add_column(column, justify=justify)
    for key in TABLE_METRICS:
        after = metrics.get(f"{key}_after_temperature")
        table.add_row(key, f"{metrics[key]:.4f}", "" if after is None else f"{after:.4f}")
    t = result["temperature"]
    out_console.print(
        f"{result['head']} run on {data} ({split}, {result['images']} images); "
        + (f"temperature T = {t:.3f}" if t is not None else result["temperature_note"]),
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    out_console.print(table)
    out_console.print(f"wrote {path} and {predictions_path(path)}", highlight=False, soft_wrap=True)


@app.command("predict")
@_exit_codes
def predict_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `softmaxlab run`.")],
    images: Annotated[
        list[Path],
        typer.Argument(
            help="Image files (PNG, JPEG, ...) or folders of them (searched recursively), resized and normalised as "
            "in training."
        ),
    ],
    top_k: Annotated[int, typer.Option("--top-k", help="Classes shown per image (capped at the class count).")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    csv_out: Annotated[
        Path | None,
        typer.Option(
            "--csv", help="Write one row per image (image, class_1, probability_1, ...) to this CSV, not to stdout."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the --csv file.")] = False,
) -> None:
    """Top-k classes of each image with the run's probabilities (temperature-scaled when fitted)."""
    from softmaxlab import runs
    from softmaxlab.inference import predict_images, predictions_csv
    from softmaxlab.progress import ConsoleCountProgress

    if csv_out is None and overwrite:
        raise UserError("--overwrite replaces the --csv file, and no --csv was given; drop --overwrite or add --csv")
    if csv_out is not None and as_json:
        raise UserError("--json and --csv both choose the output; keep one of them")
    if csv_out is not None:
        _check_new_file(csv_out, overwrite)
    result = predict_images(run_dir, images, top_k, progress=ConsoleCountProgress(err_console, label="images"))
    if csv_out is not None:
        runs.atomic_write_text(csv_out, predictions_csv(result))
        n = len(result["predictions"])
        out_console.print(f"wrote the predictions of {n} image{'s' * (n != 1)} to {csv_out}", highlight=False)
        return
    if as_json:
        typer.echo(runs.to_json(result))
        return
    t = result["temperature"]
    how = (
        f"after temperature scaling (T = {t:.3f}, fitted on the validation split)"
        if t is not None
        else f"as the head outputs them, no temperature scaling ({result['temperature_note']})"
    )
    lines = [f"{result['head']} probabilities {how}"]
    for item in result["predictions"]:
        lines.append(item["image"])
        width = max(len(c["class"]) for c in item["top"])
        lines += [f"  {rank}. {c['class']:<{width}}  {c['probability']:.4f}" for rank, c in enumerate(item["top"], 1)]
    out_console.print("\n".join(lines), highlight=False, soft_wrap=True, markup=False)


def _check_new_file(path: Path, overwrite: bool) -> None:
    """Refuse an output file that exists (unless ``overwrite``) or whose folder does not."""
    if path.is_dir():
        raise UserError(f"--csv {str(path)!r} is a folder; pass the path of the CSV file to write")
    if path.exists() and not overwrite:
        raise UserError(f"--csv {str(path)!r} already exists; choose another path or pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise UserError(f"--csv {str(path)!r}: folder {str(path.parent)!r} does not exist; create it first")


@app.command("visualize")
@_exit_codes
def visualize_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `softmaxlab run`.")],
    image: Annotated[Path, typer.Argument(help="Image file (PNG, JPEG, ...), resized and normalised as in training.")],
    out: Annotated[
        Path | None, typer.Option(help="PNG to write (default: RUN_DIR/figures/feature_maps-<image name>.png).")
    ] = None,
    channels: Annotated[int, typer.Option(min=1, help="Channels drawn per block.")] = 16,
) -> None:
    """Draw the feature maps of each block of a trained run for one image -> PNG."""
    from softmaxlab.inference import visualize_run

    path = visualize_run(run_dir, image, out, channels)
    out_console.print(f"wrote {path}", highlight=False, soft_wrap=True)


@app.command("sweep")
@_exit_codes
def sweep_cmd(
    config: Annotated[
        Path, typer.Argument(help="YAML sweep config: a base experiment plus sweep.grid (exclude, variants).")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a value of the base experiment: section.key=value (repeatable)."),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Runs trained at a time: local processes, or jobs in flight with submitit.")
    ] = 1,
    out: Annotated[
        Path | None, typer.Option(help="Sweep directory (default: runs/<name or config file name>).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the runs and their state; train nothing.")] = False,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace a sweep with another config in the output directory."),
    ] = False,
    launcher: Annotated[
        str, typer.Option(help="Where runs train: local (processes here) or submitit (Slurm jobs; sweep.submitit).")
    ] = "local",
    cluster: Annotated[
        str | None, typer.Option(help="submitit cluster: slurm, local or debug (default: slurm where srun is on PATH).")
    ] = None,
) -> None:
    """Train a grid of runs (resumable: a rerun trains only what is missing) -> results.csv, aggregate.csv,
    comparisons.csv, report."""
    from softmaxlab import sweep
    from softmaxlab.progress import ConsoleSweepProgress

    # What the dry run and the sweep share; --set changes the base experiment (sweep.yaml records it).
    options: dict[str, Any] = {"workers": workers, "overwrite": overwrite, "launcher": launcher, "cluster": cluster}
    options.update(overrides=set_ or [], on_note=_note)
    if dry_run:
        _print_plan(sweep.dry_run(config, out, **options))
        return
    result = sweep.run_sweep(config, out, progress=ConsoleSweepProgress(err_console), **options)
    _print_sweep(result)


def _print_plan(plan: Any) -> None:
    """The dry run: a row per run with its overrides and state, then one line."""
    table = Table(show_header=True, header_style="bold", box=None)
    for column in ("run", *plan.keys, "state"):
        table.add_column(column)
    for run, state in zip(plan.runs, plan.states, strict=True):
        given = [run.overrides.get(k, "") for k in plan.keys]
        table.add_row(run.name, *(json.dumps(v) if not isinstance(v, str) else v for v in given), state)
    out_console.print(table)
    out_console.print(plan.summary(), highlight=False, soft_wrap=True)


def _print_sweep(result: Any) -> None:
    """What a sweep did; exit 1 when runs failed."""
    from softmaxlab import sweep

    counts = ", ".join(f"{result.count(s)} {s}" for s in sweep.STATUSES if result.count(s))
    out_console.print(f"{len(result.rows)} runs: {counts}", highlight=False)
    tables = (sweep.RESULTS_FILE, sweep.AGGREGATE_FILE, sweep.COMPARISONS_FILE)
    out_console.print(f"wrote {', '.join(str(result.out_dir / t) for t in tables)}", highlight=False, soft_wrap=True)
    for note in result.notes:
        out_console.print(f"note: {note}", highlight=False, soft_wrap=True, markup=False)
    if result.report is not None:
        out_console.print(f"report {result.report}", highlight=False, soft_wrap=True)
    if result.count("failed"):
        err_console.print(
            f"error: {result.count('failed')} runs failed (errors in {sweep.RESULTS_FILE}); "
            "rerun the command to retry them",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
        raise typer.Exit(EXIT_UNEXPECTED)


@app.command("report")
@_exit_codes
def report_cmd(
    directory: Annotated[Path, typer.Argument(help="A run directory, or a directory of runs (a sweep, a demo).")],
    format_: Annotated[str, typer.Option("--format", help="html, md or both.")] = "both",
) -> None:
    """(Re)build report.html and report.md from the files of a run or a directory of runs."""
    from softmaxlab.report.build import write_report

    paths = write_report(directory, format_)
    out_console.print(f"wrote {', '.join(str(p) for p in paths)}", highlight=False, soft_wrap=True)


#: The help of ``softmaxlab lint``'s options (long: each states the forms it takes).
_LINT_HELP = {
    "target": "A run directory, path/to/file.py:factory, package.module:factory, timm:<name> or torchvision:<name>.",
    "loss": "The loss: a dotted class or function such as torch.nn.CrossEntropyLoss, nn.CrossEntropyLoss or "
    "F.cross_entropy (nn. is torch.nn., F. is torch.nn.functional.; a bare name is torch.nn's), or "
    "path/to/file.py:NAME or package.module:NAME (a loss class, instance or function loss(output, target)); "
    "a class is built without arguments (default: a run's head loss, else none).",
    "input_shape": "C,H,W: 3 positive integers, the shape of the 2 random example images (default 3,32,32; a run's "
    "own).",
    "kwarg": "A keyword argument of the library model's constructor or of the factory, as model.kwargs in "
    "training: NAME=VALUE, the value parsed as YAML as --set parses it (repeatable), e.g. num_classes=100.",
    "output": "Which entry of a tuple or dict output the loss takes, as model.output in training: an index "
    "(0, -1) or a key (logits). Default: the first tensor, a dict's logits or out.",
    "json": "Print JSON instead of text: {target, findings: each {kind, severity, where, message, fix, source}}; "
    "when the target cannot be linted, {target, error, exit_code}, with the same stderr line and exit code "
    "as without --json (an error of the command line itself, such as an unknown option, prints only that line).",
}


@app.command("lint")
@_exit_codes
def lint_cmd(
    target: Annotated[str, typer.Argument(help=_LINT_HELP["target"])],
    loss: Annotated[str | None, typer.Option(help=_LINT_HELP["loss"])] = None,
    input_shape: Annotated[str | None, typer.Option("--input-shape", help=_LINT_HELP["input_shape"])] = None,
    kwarg: Annotated[list[str] | None, typer.Option("--kwarg", help=_LINT_HELP["kwarg"])] = None,
    output: Annotated[str | None, typer.Option("--output", help=_LINT_HELP["output"])] = None,
    as_json: Annotated[bool, typer.Option("--json", help=_LINT_HELP["json"])] = False,
) -> None:
    """Find softmax pitfalls in a model and its loss by running it once (exit 4 on an error finding)."""
    from softmaxlab.lint_targets import lint_target, parse_kwargs
    from softmaxlab.linting import has_errors

    try:
        findings = lint_target(target, loss, input_shape, kwargs=parse_kwargs(kwarg or []), output=output)
    except Exception as exc:
        if as_json:  # a script reading stdout gets an object whatever happened
            _print_lint_error(target, exc)
        raise  # _exit_codes prints the stderr line and chooses the exit code
    if as_json:
        typer.echo(json.dumps({"target": target, "findings": [f.to_dict() for f in findings]}, indent=2))
    else:
        _print_findings(findings)
    if has_errors(findings):
        raise typer.Exit(EXIT_LINT_ERROR)


def _print_lint_error(target: str, exc: Exception) -> None:
    """``{target, error, exit_code}`` of a failed ``lint --json`` on stdout: the message and code that
    :func:`_exit_codes` gives ``exc`` (2 for bad input), or exit 1 and the exception in one line."""
    from softmaxlab.errors import short_error

    error = access_error(exc) if isinstance(exc, OSError) else exc if isinstance(exc, UserError) else None
    code = EXIT_BAD_INPUT if error is not None else EXIT_UNEXPECTED
    message = str(error) if error is not None else short_error(exc)
    typer.echo(json.dumps({"target": target, "error": message, "exit_code": code}, indent=2))


def _print_findings(findings: list[Any]) -> None:
    """Each finding as ``severity: kind at where (file:line): message`` and its fix; then a count."""
    if not findings:
        out_console.print("no softmax pitfalls found", highlight=False)
        return
    lines = []
    for f in findings:
        source = f" ({f.source})" if f.source else ""
        lines += [f"{f.severity}: {f.kind} at {f.where}{source}: {f.message}", f"  fix: {f.fix}"]
    counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "note")}
    lines.append(", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n))
    out_console.print("\n".join(lines), highlight=False, soft_wrap=True, markup=False)


#: What ``softmaxlab list`` lists, with the config section their options go in.
LISTS = {"heads": "head", "activations": "model", "models": "model", "datasets": "data"}


class Listed(NamedTuple):
    """One row of ``softmaxlab list``: a registered name (or a family's label such as
    ``timm:<name>``), its one-line description, its options model and the option keys shown."""

    name: str
    summary: str
    options: type[Any]
    keys: list[str]
    family: bool


def list_entries(what: str) -> list[Listed]:
    """Every component ``softmaxlab list WHAT`` shows, in its order: the registered names, then
    the families. A dataset's rows leave out the options every dataset shares (:func:`list_footer`
    names them), a family's the ``activation`` its options default. The docs' reference pages
    are built from this too."""
    from softmaxlab.activations import ACTIVATIONS
    from softmaxlab.data import DATASETS, DataOptions
    from softmaxlab.heads import HEADS
    from softmaxlab.models import MODELS

    registries = {"heads": HEADS, "activations": ACTIVATIONS, "models": MODELS, "datasets": DATASETS}
    if what not in registries:
        raise UserError(f"cannot list {what!r}; choose one of: {', '.join(registries)}")
    registry = registries[what]
    shared = set(DataOptions.model_fields) if what == "datasets" else set()  # every dataset's: not repeated
    rows = []
    for name in registry.names():
        options = registry.options(name)
        keys = [k for k in options.model_fields if k not in shared]
        rows.append(Listed(name, registry.summary(name), options, keys, family=False))
    for family in registry.families():  # names of a pattern: timm:<name>, path/to/file.py:factory
        keys = [k for k in family.options.model_fields if k not in shared and k != "activation"]
        rows.append(Listed(family.label, family.summary, family.options, keys, family=True))
    return rows


def list_footer(what: str) -> str | None:
    """The line ``softmaxlab list WHAT`` ends with (None: none)."""
    from softmaxlab.data import DataOptions

    if what == "datasets":
        return f"every dataset also takes data.{', data.'.join(DataOptions.model_fields)}"
    if what == "models":
        return _models_footer()
    return None


@app.command("list")
@_exit_codes
def list_cmd(what: Annotated[str, typer.Argument(help="heads, activations, models or datasets.")]) -> None:
    """List the registered heads, activations, models or datasets, with their own options."""
    from softmaxlab.models import backbone_parameters

    rows = list_entries(what)
    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column({"heads": "head", "activations": "activation", "models": "model", "datasets": "dataset"}[what])
    if what == "models":
        table.add_column("parameters", justify="right")
    table.add_column("description")
    table.add_column(f"options ({LISTS[what]}.*)")
    for row in rows:
        extra = [] if what != "models" else ["varies" if row.family else f"{backbone_parameters(row.name) / 1e6:.2f} M"]
        table.add_row(row.name, *extra, row.summary, ", ".join(row.keys))
    out_console.print(table)
    footer = list_footer(what)
    if footer is not None:
        out_console.print(footer, soft_wrap=True, highlight=False, markup=False)


def _models_footer() -> str:
    """How library models and user factories are named, and what they default to."""
    from softmaxlab.models.families import logit_heads

    return (
        "e.g. model.name=timm:resnet18 or torchvision:resnet18 (built without their classifier), "
        "model.name=nets/my_net.py:make or my_package.nets:make (your factory, called with model.kwargs); "
        "their model.activation defaults to keep (their own activations); with model.user_head=none "
        f"(your factory outputs logits) the head is one of {', '.join(logit_heads())}"
    )


export_app = typer.Typer(
    help="Send finished runs to an experiment tracker after the fact. `export mlflow DIR`: each run of DIR (a "
    "run, a sweep or a demo directory) becomes one MLflow run with its config as parameters, each epoch's "
    "metrics.jsonl record as metrics (step = epoch), the test metrics, and config.yaml, metrics.jsonl, "
    "summary.json and the report as artifacts. Idempotent: a run already in the store (exported before, or "
    "logged while it trained) is skipped and named; an export cut short is replaced by the next. To log while "
    "training instead, list tensorboard and/or mlflow in train.loggers (docs/guide/trackers.md).",
    no_args_is_help=True,
)
app.add_typer(export_app, name="export")


@export_app.command("mlflow")
@_exit_codes
def export_mlflow_cmd(
    directory: Annotated[Path, typer.Argument(help="A run directory, or a directory of runs (a sweep, a demo).")],
    uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)."),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option(help="MLflow experiment (default: DIR's name; for one run, the one it logs to itself)."),
    ] = None,
) -> None:
    """Send the finished runs of DIR to an MLflow tracking store (skipping those already there)."""
    from softmaxlab.progress import ConsoleCountProgress
    from softmaxlab.trackers import export_mlflow

    result = export_mlflow(directory, uri, experiment, progress=ConsoleCountProgress(err_console, "export"))
    out_console.print(result.line(), highlight=False, soft_wrap=True, markup=False)


bench_app = typer.Typer(help="Benchmarks of the library's cost.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("heads")
@_exit_codes
def bench_heads_cmd(
    classes: Annotated[str, typer.Option(help="Comma-separated class counts.")] = "10,100,1000,10000,100000",
    batch: Annotated[int, typer.Option(min=1, help="Samples per step.")] = 256,
    features: Annotated[int, typer.Option(min=1, help="Feature size F fed to the head.")] = 512,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    heads: Annotated[str | None, typer.Option(help="Comma-separated head names (default: every head).")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Timed steps per combination (median reported).")] = 5,
    out: Annotated[Path, typer.Option(help="Directory for bench-heads.json / .csv / .png.")] = Path("runs/bench-heads"),
) -> None:
    """Time each head's forward+backward and peak memory against the number of classes."""
    from softmaxlab import bench

    ks, names = bench.parse_classes(classes), bench.parse_heads(heads)
    settings = bench.BenchSettings(batch=batch, features=features, device=device, repeats=repeats)
    with bench.progress_bar(err_console, len(ks) * len(names)) as on_result:
        report = bench.bench_heads(ks, names, settings, on_result)
    paths = bench.write_results(report, out)
    out_console.print(bench.format_table(report["results"]), highlight=False, soft_wrap=True, markup=False)
    out_console.print(f"wrote {paths['json']}, {paths['csv']}, {paths['png']}", highlight=False, soft_wrap=True)


def _is_a(exc: BaseException, name: str) -> bool:
    # Typer vendors its command-line parser, so its exception classes are not public API:
    # recognise them by class name.
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: exits with the command's code.

    Usage errors (an unknown option, a missing argument) exit 2 with one line, as the
    library's bad-input errors do, instead of the parser's multi-line usage box. A process
    that joined a torchrun process group ends through :func:`softmaxlab.distributed.end_process`,
    an unexpected error included (its traceback, then exit 1).
    """
    try:
        code = _main(argv)
    except Exception:
        if not _joined_group():
            raise
        traceback.print_exc()
        code = EXIT_UNEXPECTED
    if _joined_group():
        sys.modules["softmaxlab.distributed"].end_process(code)
    sys.exit(code)


def _joined_group() -> bool:
    # softmaxlab.distributed (and torch) not imported: no process group was joined.
    distributed = sys.modules.get("softmaxlab.distributed")
    return distributed is not None and distributed.joined_group()


def _main(argv: list[str] | None) -> int:
    try:
        code = app(args=argv, prog_name="softmaxlab", standalone_mode=False)
    except Exception as exc:
        if not _is_a(exc, "UsageError"):
            raise
        message, ctx = exc.format_message(), getattr(exc, "ctx", None)
        if not message:  # no arguments at all: the help was shown
            return EXIT_BAD_INPUT
        hint = f"; see '{ctx.command_path} --help'" if ctx is not None else "; see 'softmaxlab --help'"
        err_console.print(f"error: {message}{hint}", highlight=False, soft_wrap=True, markup=False)
        return EXIT_BAD_INPUT
    except BaseException as exc:
        if not _is_a(exc, "Abort"):
            raise
        err_console.print("aborted", highlight=False)
        return 130
    return code if isinstance(code, int) else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    main()
