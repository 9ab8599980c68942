"""Progress reporting for long work: a rich bar on a terminal, plain lines otherwise.

The training loop calls :class:`Progress` hooks; they never read device values, so showing
progress costs no host synchronisation.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichBar


class Progress:
    """Silent progress: the hooks the training loop calls. Subclass to show something."""

    def start(self, label: str, epochs: int, batches_per_epoch: int) -> None:
        """A run with ``epochs`` epochs of ``batches_per_epoch`` batches begins."""

    def advance(self) -> None:
        """One training batch is done."""

    def epoch_end(self, record: dict[str, Any]) -> None:
        """An epoch ended; ``record`` is its line in metrics.jsonl."""

    def stop(self) -> None:
        """The run ended (finished, diverged or failed)."""

    def note(self, text: str) -> None:
        """One line about the run to show as it is (the data's split sizes, a cache it filled)."""


def _epoch_line(label: str, record: dict[str, Any], epochs: int) -> str:
    return (
        f"{label} epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} "
        f"acc {record['train_acc']:.3f} | val loss {record['val_loss']:.4f} acc {record['val_acc']:.3f} "
        f"| {record['epoch_seconds']:.1f}s"
    )


class ConsoleProgress(Progress):
    """A rich progress bar over epochs and batches on a terminal; one line per epoch when
    the output is not a terminal (logs, CI), so nothing floods a log file."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.interactive = self.console.is_terminal and sys.stderr.isatty()
        self._bar: RichBar | None = None

    def start(self, label: str, epochs: int, batches_per_epoch: int) -> None:
        self.label, self.epochs = label, epochs
        if not self.interactive:
            return
        self._bar = RichBar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._bar.start()
        self._epochs_task = self._bar.add_task(f"{label} epochs", total=epochs)
        self._batch_task = self._bar.add_task("  batches", total=batches_per_epoch)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._batch_task)

    def epoch_end(self, record: dict[str, Any]) -> None:
        line = _epoch_line(self.label, record, self.epochs)
        if self._bar is not None:
            self._bar.console.print(line)
            self._bar.advance(self._epochs_task)
            self._bar.reset(self._batch_task)
        else:
            self.console.print(line, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def note(self, text: str) -> None:
        console = self._bar.console if self._bar is not None else self.console
        console.print(text, highlight=False, soft_wrap=True, markup=False)


class ConsoleSweepProgress:
    """A rich bar over a sweep's runs (done, running, failed, ETA) on a terminal; one line
    per ended run otherwise. Implements the hooks of :class:`softmaxlab.sweep.SweepProgress`."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.interactive = self.console.is_terminal and sys.stderr.isatty()
        self._bar: RichBar | None = None

    def start(self, total: int, done: int) -> None:
        self.total = total
        if done:
            self.console.print(f"{done} of {total} runs already done; skipping them", highlight=False)
        if not self.interactive:
            return
        self._bar = RichBar(
            TextColumn("runs"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("runs", total=total, completed=done, counts="")

    def update(self, done: int, running: int, failed: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, counts=f"running {running}, failed {failed}")

    def run_end(self, name: str, status: str, error: str | None) -> None:
        line = f"{name}: {status}" + (f" ({error})" if error else "")
        (self._bar.console if self._bar is not None else self.console).print(
            line, highlight=False, soft_wrap=True, markup=False
        )

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class CountProgress:
    """Silent progress over a number of items (the runs an export sends). Subclass to show something."""

    def start(self, total: int) -> None:
        """``total`` items follow."""

    def item_end(self, line: str) -> None:
        """One item is done; ``line`` says how it went."""

    def advance(self, count: int = 1) -> None:
        """``count`` more items are done, without a line each (the images of a batch)."""

    def stop(self) -> None:
        """The work ended (done or failed)."""


class ConsoleCountProgress(CountProgress):
    """A rich bar over the items on a terminal with each item's line above it; the lines alone
    when the output is not a terminal (logs, CI)."""

    def __init__(self, console: Console | None = None, label: str = "items") -> None:
        self.console = console or Console(stderr=True)
        self.label = label
        self.interactive = self.console.is_terminal and sys.stderr.isatty()
        self._bar: RichBar | None = None

    def start(self, total: int) -> None:
        if not self.interactive:
            return
        columns = (TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self._bar = RichBar(*columns, console=self.console, transient=True)
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=total)

    def item_end(self, line: str) -> None:
        console = self._bar.console if self._bar is not None else self.console
        console.print(line, highlight=False, soft_wrap=True, markup=False)
        if self._bar is not None:
            self._bar.advance(self._task)

    def advance(self, count: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, count)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
