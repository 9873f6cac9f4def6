"""`ganserve datasets upload|list|show|delete`: a server's uploaded datasets (POST, GET and DELETE /datasets)
through the Python client. An upload shows the bytes sent, then waits while the server decodes every image."""

import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Self

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ganserve.cli import common
from ganserve.cli.common import ApiKey, Server, err, fail, reported
from ganserve.client import LeftOut

app = typer.Typer(
    help="Upload your own images to a server as a dataset, and list, show and delete a server's datasets.\n\n"
    'A job then trains on one by naming it: `{"dataset": "<id or name>", …}`.',
    no_args_is_help=True,
)

DatasetRef = Annotated[
    str, typer.Argument(help="The dataset's id (ds-…) or name.", metavar="ID|NAME", show_default=False)
]


@app.command()
def upload(
    path: Annotated[
        Path,
        typer.Argument(
            exists=True,
            help="A folder of PNG/JPEG images (one level of class sub-folders: labels), or a .zip, .tar, .tar.gz "
            "or .tgz of one, or MNIST IDX files (*-images-idx3-ubyte[.gz]).",
            metavar="DIR|FILE",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None, typer.Option(help="A name to use instead of the id, unique among yours.", show_default=False)
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(min=1, help="Centre-crop and resize every image to this square size.", show_default=False),
    ] = None,
    server: Server = None,
    api_key: ApiKey = None,
) -> None:
    """Upload a folder or an archive of images as a dataset (needs a key with scope `train`).

    A folder is archived to a temporary .tar first (its files under their relative paths; links are left out,
    never followed). Prints the new dataset's id on stdout, and its count, shape and classes."""
    if name is not None:
        from core.datasets import name_problem  # the server's own rule, checked before the bytes are sent

        if (problem := name_problem(name)) is not None:
            raise fail(f"--name {name!r}: {problem}", 2)
    try:
        with reported(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LeftOut)
            client = common.connect(server, api_key)
            with _UploadDisplay(path) as display:
                dataset = client.upload_dataset(path, name=name, image_size=image_size, progress=display.progress)
    except OSError as e:  # the folder or the file could not be read
        raise fail(f"cannot read {e.filename or path}: {e.strerror or e}") from None
    console = err()
    for warning in caught:
        console.print(f"[yellow]warning:[/yellow] {escape(str(warning.message))}", soft_wrap=True)
    console.print(f"dataset {_named(dataset)}: {_summary(dataset)}", soft_wrap=True)
    typer.echo(dataset["id"])


@dataclass
class _UploadDisplay:
    """What an upload shows on stderr, one phase at a time: archiving (a folder), a bar of the bytes sent, then
    waiting while the server validates (the spinners only on a terminal: in a log they would be empty lines)."""

    path: Path
    _phase: Progress | None = field(default=None, init=False)
    _task: TaskID | None = field(default=None, init=False)
    _total: int | None = field(default=None, init=False)

    def __enter__(self) -> Self:
        if self.path.is_dir():
            self._spinner(f"archiving {escape(str(self.path))}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def progress(self, sent: int, total: int) -> None:
        if self._total is None:  # the body is ready: the bar of the bytes sent
            self._total = total
            self.stop()
            columns = (
                TextColumn("uploading"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            )
            self._phase = Progress(*columns, console=err())
            self._phase.start()
            self._task = self._phase.add_task("upload", total=total)
        if self._phase is not None and self._task is not None:
            self._phase.update(self._task, completed=sent)
        if sent == total:
            self.stop()
            self._spinner("validating: the server decodes every image")

    def _spinner(self, text: str) -> None:
        if not err().is_terminal:
            return
        self._phase = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err(), transient=True
        )
        self._phase.start()
        self._task = self._phase.add_task(text, total=None)

    def stop(self) -> None:
        if self._phase is not None:
            self._phase.stop()
        self._phase = self._task = None


def _named(dataset: dict[str, Any]) -> str:
    return dataset["id"] + (f" ({escape(dataset['name'])})" if dataset.get("name") else "")


def _shape(dataset: dict[str, Any]) -> str:
    return "×".join(map(str, dataset.get("shape") or [])) or "–"


def _classes(dataset: dict[str, Any], shown: int = 10) -> str:
    classes = dataset.get("classes")
    if not classes:
        return "no labels"
    names = ", ".join(escape(c) for c in classes[:shown]) + (", …" if len(classes) > shown else "")
    return f"{len(classes)} classes ({names})"


def _summary(dataset: dict[str, Any]) -> str:
    return f"{dataset['count']:,} images, {_shape(dataset)}, {_classes(dataset)}"


def _when(dataset: dict[str, Any]) -> str:
    created = dataset.get("created_at")
    return datetime.fromisoformat(created).astimezone().strftime("%m-%d %H:%M") if created else "–"


def _size(n: int | None) -> str:
    if n is None:
        return "–"
    if n < 1000:
        return f"{n} B"
    exponent = min(3, (len(str(n)) - 1) // 3)
    return f"{n / 1000**exponent:.1f} {('KB', 'MB', 'GB')[exponent - 1]}"


@app.command("list")
def list_datasets(server: Server = None, api_key: ApiKey = None) -> None:
    """A server's datasets, newest first: yours (an admin key: everyone's)."""
    with reported():
        found = common.connect(server, api_key).datasets()
    table = Table(title=f"{len(found)} dataset(s), newest first")
    table.add_column("id", no_wrap=True, min_width=15)
    table.add_column("name")
    table.add_column("images", justify="right", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    table.add_column("classes", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for d in found:
        classes = str(len(d["classes"])) if d.get("classes") else "–"
        table.add_row(d["id"], escape(d.get("name") or "–"), f"{d['count']:,}", _shape(d), classes, _when(d))
    Console().print(table)


@app.command()
def show(
    dataset: DatasetRef,
    preview: Annotated[
        Path | None,
        typer.Option(
            help="Also save its preview grid (a PNG of 64 of its images, every class shown) to this file.",
            show_default=False,
        ),
    ] = None,
    server: Server = None,
    api_key: ApiKey = None,
) -> None:
    """One dataset: its count, shape, classes, SHA-256 and preview."""
    with reported():
        client = common.connect(server, api_key)
        found = client.dataset(dataset)
        png = client.dataset_preview(found["id"]) if preview is not None else None
    table = Table(title=f"dataset {_named(found)}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = {
        "id": found["id"],
        "name": escape(found.get("name") or "–"),
        "format": found.get("format", "–"),
        "images": f"{found['count']:,}",
        "shape": _shape(found),
        "classes": _classes(found, shown=50),
        "sha256": found.get("sha256", "–"),
        "size": _size(found.get("size_bytes")),
        "created": str(found.get("created_at", "–")),
        "preview": f"{client.base_url}{found['preview']}" if found.get("preview") else "–",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    Console().print(table)
    if preview is not None and png is not None:
        preview.write_bytes(png)
        err().print(f"preview saved to {escape(str(preview))}")


@app.command()
def delete(
    dataset: Annotated[str, typer.Argument(help="The dataset's id (ds-…).", metavar="ID", show_default=False)],
    server: Server = None,
    api_key: ApiKey = None,
) -> None:
    """Delete a dataset; refused while a queued or running job uses it."""
    with reported():
        common.connect(server, api_key).delete_dataset(dataset)
    err().print(f"deleted dataset {escape(dataset)}")
