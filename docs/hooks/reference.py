"""Reference pages generated from the code at build time.

A page asks for generated markdown with a line of its own, ``<!-- gen:NAME ARG -->``; the
hook replaces it with what :data:`GENERATORS` makes of the code as it is now, so a stale
reference cannot be built: a renamed head, a new CLI option or a new exit code shows up on
the next build, and an unknown marker, a file of the run directory without a description
here, or an exit code without a meaning fails it.

* ``components heads|activations|models|datasets``: the rows of ``softmaxlab list``
  (:func:`softmaxlab.cli.list_entries`), each with its options: type, default, constraints
  and the comment beside the field in the source;
* ``config-section NAME``, ``config-yaml``, ``sweep-section``: the pydantic models of
  ``softmaxlab.config`` and ``softmaxlab.sweep.spec``;
* ``cli``: typer's command tree (``typer.main.get_command``), each command's usage and the
  help record of every parameter, as ``--help`` prints them;
* ``exit-codes``: the ``EXIT_*`` constants of ``softmaxlab.cli``;
* ``run-files``, ``sweep-files``: the file names of ``softmaxlab.runs`` and
  ``softmaxlab.sweep.directory``;
* ``layers``: the import-linter layers of ``pyproject.toml``, each module with the first
  line of its docstring.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import json
import re
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

if sys.version_info >= (3, 11):
    import tomllib
else:  # the docs extra installs tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
#: A reST role (``:func:`~softmaxlab.stats.ece_band```), shown as a code span of its last part.
ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`~?([^`]+)`")
MARKER = re.compile(r"^<!-- gen:(?P<name>[\w-]+)(?: (?P<arg>\S+))? -->[ \t]*$", re.M)


# --------------------------------------------------------------------------- markdown


def text(value: str) -> str:
    """Plain text for markdown (a table cell included): outside its code spans no HTML tags,
    emphasis or cell breaks; whitespace joined to single spaces."""
    value = ROLE.sub(lambda m: code(m.group(1).rsplit(".", 1)[-1]), value)
    out = []
    for i, piece in enumerate(re.split(r"(`+[^`]*`+)", " ".join(value.split()))):
        if i % 2 == 0:
            piece = piece.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            piece = piece.replace("*", r"\*").replace("|", r"\|")
        out.append(piece)
    return "".join(out)


def code(value: str) -> str:
    """``value`` as a code span (a pipe in one does not end a table cell)."""
    return f"`` {value} ``" if "`" in value else f"`{value}`"


def anchor(name: str) -> str:
    """A heading id for a registry name: ``timm:<name>`` -> ``timm-name``."""
    return re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def details(doc: str | None) -> list[str]:
    """The paragraphs of a docstring after its first (the summary), as markdown: reST roles as
    code spans, an indented block as a code block."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")[1:]
    out = []
    for paragraph in paragraphs:
        if paragraph.startswith("    ") or paragraph.lstrip().startswith(">>>"):
            out.append("```\n" + textwrap.dedent(paragraph) + "\n```")
        else:
            out.append(text(paragraph))
    return out


def first_line(doc: str | None) -> str:
    """The first sentence-line of a docstring (its first paragraph, joined)."""
    return " ".join(inspect.cleandoc(doc or "").split("\n\n", 1)[0].split())


# --------------------------------------------------------------------------- options


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """The comments of each field declared in ``cls``'s own body: the full-line comments right
    above the field, then the comment at the end of its statement (``#:`` or ``#``)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, whole line)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            whole = not lines[tok.start[0] - 1][: tok.start[1]].strip()
            comments[tok.start[0]] = (tok.string.lstrip("#:").strip(), whole)
    body = ast.parse(source).body[0]
    out = {}
    for stmt in getattr(body, "body", []):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above, line = [], stmt.lineno - 1
        while line in comments and comments[line][1]:
            above.insert(0, comments[line][0])
            line -= 1
        after = [c for n in range(stmt.lineno, stmt.end_lineno + 1) if (c := comments.get(n)) and not c[1]]
        out[stmt.target.id] = " ".join([*above, *(c[0] for c in after)])
    return out


def field_description(model: type, key: str) -> str:
    """The comment of ``key`` in the first class of ``model``'s MRO that has one."""
    for cls in model.__mro__:
        if key in getattr(cls, "__annotations__", {}) and field_comments(cls).get(key):
            return field_comments(cls)[key]
    return ""


def type_text(annotation: Any) -> str:
    """A field's type as a reader writes it in YAML: ``int or null``, ``{sgd, adam, adamw}``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return "{" + ", ".join(str(a) for a in args) + "}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a) for a in args)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin in (list, tuple, dict, set):
        inner = ", ".join("..." if a is Ellipsis else type_text(a) for a in args)
        return f"{origin.__name__}[{inner}]" if args else origin.__name__
    if isinstance(annotation, type):
        return "section" if annotation.__module__.startswith("softmaxlab") else annotation.__name__
    return str(annotation).replace("typing.", "")


def constraints(field: Any) -> str:
    """``>= 1``, ``> 0, < 1``: the bounds pydantic checks."""
    symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "length >=", "max_length": "length <="}
    out = []
    for item in field.metadata:
        for attr, symbol in symbols.items():
            value = getattr(item, attr, None)
            if value is not None:
                out.append(f"{symbol} {value:g}" if isinstance(value, float) else f"{symbol} {value}")
    return ", ".join(out)


def default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if hasattr(value, "model_dump"):
        return "(section)"
    value = list(value) if isinstance(value, tuple) else value
    try:
        return code(json.dumps(value))
    except TypeError:
        return code(repr(value))


def options_table(model: type, keys: list[str], prefix: str) -> str:
    """A row per option ``prefix.key`` of the pydantic ``model``: type, default, bounds, comment."""
    rows = []
    for key in keys:
        field = model.model_fields[key]
        kind = type_text(field.annotation)
        bounds = constraints(field)
        rows.append(
            [
                code(f"{prefix}{key}"),
                code(kind) + (f" ({code(bounds)})" if bounds else ""),
                default_text(field),
                text(field_description(model, key)),
            ]
        )
    return table(["key", "type", "default", "description"], rows)


# --------------------------------------------------------------------------- generators


def components(what: str) -> str:
    """``softmaxlab list WHAT`` as a page: an overview, then each component with its options."""
    from softmaxlab.cli import LISTS, list_entries, list_footer

    rows = list_entries(what)
    prefix = f"{LISTS[what]}."
    params = {}
    if what == "models":
        from softmaxlab.models import backbone_parameters

        params = {r.name: f"{backbone_parameters(r.name) / 1e6:.2f} M" for r in rows if not r.family}
    header = ["name", *(["parameters"] if params else []), "description", "options"]
    overview = [
        [
            f"[{code(r.name)}](#{anchor(r.name)})",
            *([params.get(r.name, "varies")] if params else []),
            text(r.summary),
            ", ".join(code(k) for k in r.keys),
        ]
        for r in rows
    ]
    out = [table(header, overview)]
    footer = list_footer(what)
    if footer:
        out.append(text(footer))
    for r in rows:
        out.append(f"## {code(r.name)} {{ #{anchor(r.name)} }}")
        out.append(
            text(r.summary) + (f" Parameters with the default options: {params[r.name]}." if r.name in params else "")
        )
        out += details(inspect.getdoc(registry_factory(what, r)))
        if r.keys:
            out.append(options_table(r.options, r.keys, prefix))
        else:
            out.append("No options of its own.")
    if what == "datasets":
        from softmaxlab.data import DataOptions

        out.append("## Options of every dataset { #every-dataset }")
        out.append(options_table(DataOptions, list(DataOptions.model_fields), prefix))
    return "\n\n".join(out)


def registry_factory(what: str, row: Any) -> Any:
    """The factory (class or function) registered as ``row``'s name or family."""
    from softmaxlab.activations import ACTIVATIONS
    from softmaxlab.data import DATASETS
    from softmaxlab.heads import HEADS
    from softmaxlab.models import MODELS

    registry = {"heads": HEADS, "activations": ACTIVATIONS, "models": MODELS, "datasets": DATASETS}[what]
    if row.family:
        return next(f.factory for f in registry.families() if f.label == row.name)
    return registry.get(row.name)


def config_section(name: str) -> str:
    """The fields of one section of :class:`softmaxlab.config.Config` (``top``: its own leaves)."""
    from softmaxlab.config import Config

    if name == "top":
        keys = [k for k, f in Config.model_fields.items() if type_text(f.annotation) != "section"]
        return options_table(Config, keys, "")
    field = Config.model_fields.get(name)
    if field is None:
        raise PluginError(f"config-section {name!r}: Config has no such section ({', '.join(Config.model_fields)})")
    model = field.annotation
    model = typing.get_args(model)[0] if typing.get_origin(model) is typing.Annotated else model
    return first_line(model.__doc__) + "\n\n" + options_table(model, list(model.model_fields), f"{name}.")


def config_yaml(_: str | None = None) -> str:
    from softmaxlab.config import Config

    return "```yaml\n" + Config().to_yaml() + "```"


def sweep_section(_: str | None = None) -> str:
    from softmaxlab.sweep.spec import SweepSpec

    doc = inspect.cleandoc(SweepSpec.__doc__ or "").split("\n\n", 1)[-1]
    doc = re.sub(r":\w+:`~?([\w.]+)`", lambda m: code(m.group(1).rsplit(".", 1)[-1]), doc)
    return options_table(SweepSpec, list(SweepSpec.model_fields), "sweep.") + "\n\n" + " ".join(doc.split())


def cli(_: str | None = None) -> str:
    """Every command of ``softmaxlab``: an overview, then its usage and parameters."""
    import typer

    from softmaxlab.cli import app

    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="softmaxlab")
    commands = []

    def walk(group: Any, parent: Any, path: list[str]) -> None:
        for name in group.list_commands(parent):
            command = group.get_command(parent, name)
            sub = command.context_class(command, info_name=name, parent=parent)
            commands.append((" ".join([*path, name]), command, sub))
            if hasattr(command, "list_commands"):
                walk(command, sub, [*path, name])

    walk(root, ctx, ["softmaxlab"])
    overview = [[f"[{code(p)}](#{anchor(p)})", text(c.get_short_help_str(limit=300))] for p, c, _ in commands]
    out = [text(root.help or ""), table(["command", "what it does"], overview)]
    for path, command, sub in commands:
        out.append(f"## {path} {{ #{anchor(path)} }}")
        out.append(text(command.help or ""))
        out.append("```\n" + command.get_usage(sub) + "\n```")
        if hasattr(command, "list_commands"):
            out.append(
                "Commands: "
                + ", ".join(f"[{code(f'{path} {n}')}](#{anchor(f'{path} {n}')})" for n in command.list_commands(sub))
                + "."
            )
        records = [p.get_help_record(sub) for p in command.get_params(sub)]
        rows = [[code(opts), text(help_)] for opts, help_ in (r for r in records if r)]
        if rows:
            out.append(table(["argument or option", "description"], rows))
    return "\n\n".join(out)


#: What each exit code of ``softmaxlab.cli`` means, by the constant's name (a constant without
#: one here, or one here without a constant, fails the build).
EXIT_MEANINGS = {
    "EXIT_OK": "success",
    "EXIT_UNEXPECTED": (
        "anything unexpected (a bug: please report it with the traceback); `sweep` also exits 1 when a run "
        "failed (its error is in `results.csv`; rerun the command to retry those runs)"
    ),
    "EXIT_BAD_INPUT": (
        "bad input (a `UserError`, a usage error, a full disk or an unwritable path): one line on stderr says "
        "what is wrong and how to fix it, no traceback; a file whose write failed keeps its previous version"
    ),
    "EXIT_DIVERGED": (
        'the run diverged (a `DivergedError`: non-finite loss); `summary.json` records `status: "diverged"` with '
        "the epoch and step, and the weights of the last good epoch are kept"
    ),
    "EXIT_LINT_ERROR": "`softmaxlab lint` found an error-severity pitfall (warnings and notes alone exit 0)",
    "EXIT_INTERRUPTED": (
        "interrupted (Ctrl-C; SIGTERM too while a sweep trains its runs locally, whose worker processes stop "
        "with it): `softmaxlab resume RUN_DIR` continues a run, and the same sweep command a sweep, from the "
        "last checkpoint"
    ),
}


def exit_codes(_: str | None = None) -> str:
    from softmaxlab import cli as module

    constants = {k: v for k, v in vars(module).items() if k.startswith("EXIT_") and isinstance(v, int)}
    missing, extra = set(constants) - set(EXIT_MEANINGS), set(EXIT_MEANINGS) - set(constants)
    if missing or extra:
        raise PluginError(f"exit codes: describe {sorted(missing)} / remove {sorted(extra)} in {__file__}")
    rows = [[str(v), code(k), EXIT_MEANINGS[k]] for k, v in sorted(constants.items(), key=lambda kv: kv[1])]
    return "| code | constant (`softmaxlab.cli`) | meaning |\n| --- | --- | --- |\n" + "\n".join(
        "| " + " | ".join(r) + " |" for r in rows
    )


#: What each file of a run directory holds, by its name in ``softmaxlab.runs``.
RUN_FILES = {
    "config.yaml": (
        "the fully resolved config; `softmaxlab run runs/first/config.yaml --out runs/again` reproduces the run"
    ),
    "metrics.jsonl": (
        "one JSON object per epoch: `epoch`, `train_loss`, `train_acc`, `val_loss`, `val_acc`, `epoch_seconds`, "
        "`train_images_per_second`, `train_image_size`, `lr`, `grad_norms`, `activation_stats` (and head state "
        "such as Gumbel's `tau`)"
    ),
    "summary.json": "the run's results, its timing and environment: [below](#summaryjson)",
    "predictions.npz": (
        "the test probabilities from the head, before temperature scaling: `probs` (N, K) float32, `targets` (N,) "
        "int64, `index` (N,) the position of each image in the test split (beyond 1,000 classes the 100 most "
        "probable classes per image: `top_probs`, `top_classes`, `target_probs`), so any analysis can be redone "
        "without retraining"
    ),
    "model.pt": (
        "the weights with the config, class names and normalisation statistics; loads with "
        "`torch.load(..., weights_only=True)`"
    ),
    "checkpoint.pt": (
        "while the run trains: the state to resume from (model, optimiser, schedule, loss scaler, head state, "
        "epoch and step, random states); deleted when the run finishes"
    ),
    "checkpoint.prev.pt": "the checkpoint before, used when `checkpoint.pt` cannot be read",
    "figures": (
        "`feature_maps.png`: each block's feature maps for the first validation image (and the PNGs of `report.md`)"
    ),
    "report.html": "the run's report, one self-contained file ([The report](../guide/report.md))",
    "report.md": "the same tables in Markdown, with the figures as PNG files in `figures/`",
    "tensorboard": (
        "with `train.loggers: [tensorboard]`: TensorBoard's event files, one scalar per epoch record "
        "([Trackers](../guide/trackers.md)); `tensorboard --logdir runs/` shows them"
    ),
    "mlflow.json": (
        "with `train.loggers: [mlflow]`: the tracking store and the MLflow run id this run logs to, so a resumed "
        "run continues the same MLflow run"
    ),
    ".softmaxlab.lock": (
        "the lock of the process writing the directory (`flock`, released by the operating system when the "
        "process dies)"
    ),
}

#: What each file of a sweep directory holds, by its name in ``softmaxlab.sweep.directory``.
SWEEP_FILES = {
    "sweep.yaml": "the resolved base config and the grid: another config into the same directory is refused",
    "results.csv": "one row per run: its overrides, `status`, `error` and every number of its `summary.json`",
    "aggregate.csv": "one row per variant: `<metric>_mean`, `<metric>_std`, `<metric>_n` over its finished runs",
    "comparisons.csv": "every variant against `sweep.compare_to`, paired by seed ([Sweeps](../guide/sweeps.md))",
    "runs": "a run directory per run, named after its overrides",
    "jobs.json": "with `--launcher submitit`: the cluster and the job id of each run",
    "submitit": "with `--launcher submitit`: the job logs, `submitit/<job id>/`",
    "report.html": "the report over all the runs",
    "report.md": "the same in Markdown",
    ".softmaxlab.lock": "the lock of the process writing the sweep",
}


def files_table(names: list[str], described: dict[str, str], where: str) -> str:
    missing, extra = [n for n in names if n not in described], set(described) - set(names)
    if missing or extra:
        raise PluginError(f"{where}: describe {missing} / remove {sorted(extra)} in {__file__}")
    return table(["file", "what"], [[code(n + ("/" if "." not in n else "")), described[n]] for n in names])


def run_files(_: str | None = None) -> str:
    from softmaxlab import runs

    names = [*runs.RUN_FILES, runs.FIGURES, *runs.DERIVED_FILES, runs.TENSORBOARD_DIR, runs.MLFLOW_FILE, runs.LOCK]
    return files_table(names, RUN_FILES, "run-files (softmaxlab.runs)")


def sweep_files(_: str | None = None) -> str:
    from softmaxlab import runs
    from softmaxlab.sweep import directory

    names = [directory.SWEEP_FILE, directory.RESULTS_FILE, directory.AGGREGATE_FILE, directory.COMPARISONS_FILE]
    names += [directory.RUNS_DIR, directory.JOBS_FILE, "submitit", *runs.DERIVED_FILES, runs.LOCK]
    return files_table(names, SWEEP_FILES, "sweep-files (softmaxlab.sweep.directory)")


def module_summary(module: str) -> str:
    """The first line of a module's docstring, read from its source (nothing is imported)."""
    base = ROOT / "src" / Path(*module.split("."))
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    if not path.is_file():
        raise PluginError(f"layers: {module} (pyproject.toml [tool.importlinter]) has no source file")
    return first_line(ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))))


def layers(_: str | None = None) -> str:
    """The layers contracts of ``pyproject.toml``, top layer first, each module with its summary."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    out = []
    for contract in config["contracts"]:
        if contract.get("type") != "layers":
            continue
        layered = contract["layers"]
        rows = []
        for i, layer in enumerate(layered):
            for module in (m.strip() for m in layer.split("|")):
                rows.append(
                    [str(len(layered) - 1 - i), code(module.removeprefix("softmaxlab.")), text(module_summary(module))]
                )
        out.append(f"**{text(contract['name'])}** (a module imports only from the layers below its own):")
        out.append(table(["layer", "module", "what it is"], rows))
    return "\n\n".join(out)


GENERATORS: dict[str, Callable[[str | None], str]] = {
    "components": components,
    "config-section": config_section,
    "config-yaml": config_yaml,
    "sweep-section": sweep_section,
    "cli": cli,
    "exit-codes": exit_codes,
    "run-files": run_files,
    "sweep-files": sweep_files,
    "layers": layers,
}


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    def generate(match: re.Match) -> str:
        name, arg = match.group("name"), match.group("arg")
        if name not in GENERATORS:
            raise PluginError(f"{page.file.src_uri}: unknown marker gen:{name}; known: {', '.join(GENERATORS)}")
        return GENERATORS[name](arg)

    return MARKER.sub(generate, markdown)
