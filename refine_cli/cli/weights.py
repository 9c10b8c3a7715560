"""`refine-cli weights ...`: list, fetch, import, verify and inspect checkpoints. Thin: every command calls
`refine_cli.weights` and renders the result with Rich; errors go through `cli_errors`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich import box
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from refine_cli.cli import heavy_imports
from refine_cli.cli.common import cli_errors, console, err_console

if TYPE_CHECKING:
    from refine_cli import weights

weights_app = typer.Typer(
    help="List, download, import, verify and inspect checkpoints.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

CacheDir = Annotated[
    Optional[Path],
    typer.Option("--cache-dir", help="Cache folder (default: $REFINE_CLI_CACHE or ~/.cache/refine-cli).",
                 file_okay=False, rich_help_panel="Locations"),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KB", "MB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _classes(e: weights.WeightsEntry) -> str:
    if e.kind == "refiner" and not e.num_classes:
        return "any"  # a class-agnostic refiner
    return "-" if e.num_classes is None else str(e.num_classes)


def _status(status: str) -> str:
    if status in ("present", "downloaded"):
        return f"[green]{status}[/]"
    if status == "partial":
        return "[yellow].part resumable[/]"
    if status.startswith("unreadable"):
        return f"[red]{status}[/]"
    return f"[dim]{status}[/]"


@weights_app.command("list")
def list_cmd(cache_dir: CacheDir = None, as_json: AsJson = False) -> None:
    """Bundled, cached (imported or downloaded) and downloadable checkpoints."""
    with heavy_imports():
        from refine_cli import weights
    with cli_errors():
        entries = weights.list_weights(cache_dir=cache_dir)
    if as_json:
        rows = [{**e.__dict__, "path": str(e.path) if e.path else None} for e in entries]
        console.print_json(json.dumps(rows))
        return
    table = _weights_table(entries, arch=True)
    if console.measure(table, options=console.options.update_width(_UNBOUNDED)).minimum > console.width:
        table = _weights_table(entries, arch=False)  # a narrow terminal: `weights info NAME` names the arch
    console.print(table)


_UNBOUNDED = 10_000  # columns: measures a table's natural width


def _weights_table(entries: list[weights.WeightsEntry], *, arch: bool) -> Table:
    """Names, place, kind, classes, size and status are never cut; only the status text wraps. Without `arch`, the
    columns sit one space apart, so the table fits 80 columns."""
    spacing = {} if arch else {"padding": (0, 0), "show_edge": False}
    table = Table(title="refine-cli weights", box=box.SIMPLE_HEAD, **spacing)  # type: ignore[arg-type]
    table.add_column("name", no_wrap=True)  # names are what the user types next
    table.add_column("where", no_wrap=True)
    if arch:
        table.add_column("arch", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("classes", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("status", min_width=len("downloaded"))
    for e in entries:
        cells = [escape(e.name), escape(e.where), *([e.arch or "-"] if arch else []), e.kind or "-", _classes(e),
                 _size(e.size), _status(e.status)]
        table.add_row(*cells)
    return table


@weights_app.command("fetch")
def fetch_cmd(
    name: Annotated[str, typer.Argument(help="A downloadable name (see `refine-cli weights list`).")],
    cache_dir: CacheDir = None,
) -> None:
    """Download a file (resumable, sha256-checked); a segmentation checkpoint is then converted into the cache."""
    with heavy_imports():
        from refine_cli import weights
    with cli_errors():
        rf = weights.remote_file(name)
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task(rf.file_name, total=None)

            def progress(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total)

            path = weights.fetch(rf.name, cache_dir=cache_dir, progress=progress)
        console.print(f"[green]downloaded[/] {rf.name}: {escape(str(path))}", highlight=False)
        if rf.kind == "base":
            out = weights.convert_remote(rf.name, cache_dir=cache_dir)
            console.print(f"[green]converted[/] into {escape(str(out))}", highlight=False)


@weights_app.command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(help="The checkpoint file to import.", dir_okay=False)],
    source: Annotated[str, typer.Option(
        "--from", help="Its layout: torchvision, fcn-caffe-port, espnet (sacmehta/ESPNet, CamVid) or espnetv2 "
                       "(sacmehta/EdgeNets, PASCAL VOC).")],
    arch: Annotated[Optional[str], typer.Option(
        "--arch", help="The network it fits (a registry name); espnet and espnetv2 imply theirs.")] = None,
    name: Annotated[
        Optional[str], typer.Option("--name", help="Name in the cache (default: the file's stem).")
    ] = None,
    classes: Annotated[Optional[Path], typer.Option(
        "--classes", help="Text file of class names, one a line in output order (default: the source's: CamVid's "
                          "11 for espnet, else the 21 VOC classes).",
        dir_okay=False)] = None,
    cache_dir: CacheDir = None,
) -> None:
    """Check a public checkpoint against a network, key by key, and save it into the cache in our format."""
    with heavy_imports():
        from refine_cli import weights
    with cli_errors():
        class_names = weights.read_class_names(classes) if classes is not None else None
        out_name = name if name is not None else file.stem
        ckpt = weights.import_checkpoint(file, source=source, arch=arch, classes=class_names, name=name,
                                         cache_dir=cache_dir)
        path = weights.imported_path(out_name, cache_dir=cache_dir)
    console.print(f"[green]imported[/] {escape(out_name)} ({ckpt.arch}, {len(ckpt.meta.classes)} classes): "
                  f"{escape(str(path))}", highlight=False)


@weights_app.command("verify")
def verify_cmd(
    targets: Annotated[
        Optional[list[str]], typer.Argument(help="Names or paths (default: every file present).")
    ] = None,
    cache_dir: CacheDir = None,
    as_json: AsJson = False,
) -> None:
    """Check sha256 sums against the manifest, load each checkpoint and build its network; exit 1 on a failure, 2
    when a name or path names nothing."""
    with heavy_imports():
        from refine_cli import weights
    with cli_errors():
        results = weights.verify(targets or (), cache_dir=cache_dir)
    if as_json:
        console.print_json(json.dumps([{**r.__dict__, "path": str(r.path) if r.path else None} for r in results]))
    elif not results:
        console.print("nothing to verify: no bundled, cached or downloaded weights")
    else:
        table = Table(title="refine-cli weights verify")
        for col in ("name", "file", "result", "detail"):
            table.add_column(col)
        for r in results:
            table.add_row(r.name, escape(str(r.path)) if r.path else "-", "[green]OK[/]" if r.ok else "[red]FAILED[/]",
                          escape(r.detail))
        console.print(table)
    if not all(r.known for r in results):
        raise typer.Exit(2)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def _remote_info(rf: weights.RemoteFile, cache_dir: Path | None) -> dict[str, Any]:
    from refine_cli import weights

    entry = weights.remote_entry(rf, cache_dir=cache_dir)
    return {"name": rf.name, "where": "remote", "status": entry.status,
            "file": str(entry.path) if entry.path else None, "size": entry.size, "url": rf.url, "sha256": rf.sha256,
            "kind": rf.kind, "arch": rf.arch or rf.trunk, "classes": list(rf.classes) if rf.kind == "base" else None,
            "preprocess": rf.preprocess.to_dict() if rf.preprocess else None, "metrics": dict(rf.metrics),
            "description": rf.description}


@weights_app.command("info")
def info_cmd(
    target: Annotated[str, typer.Argument(help="A checkpoint name or path.")],
    cache_dir: CacheDir = None,
    as_json: AsJson = False,
) -> None:
    """Show a checkpoint's metadata: network, arguments, classes, preprocessing, provenance, metrics."""
    with heavy_imports():
        from refine_cli import weights
    with cli_errors():
        rf = weights.find_remote(target)
        local = weights.available_names(cache_dir=cache_dir)
        if rf is not None and target not in local["bundled"] + local["cache"]:
            info = _remote_info(rf, cache_dir)  # not converted (or a trunk): the catalog's entry, no download
        else:
            path = weights.resolve(target, cache_dir=cache_dir, download=False)
            ckpt = weights.load_checkpoint(path, mmap=True, check_values=False)
            info = {"name": target, "file": str(path), "size": path.stat().st_size, "arch": ckpt.arch,
                    "arch_args": dict(ckpt.arch_args), "kind": ckpt.kind, "parameters": ckpt.num_parameters,
                    "classes": list(ckpt.meta.classes), "preprocess": ckpt.meta.preprocess.to_dict(),
                    "provenance": dict(ckpt.meta.provenance), "metrics": dict(ckpt.meta.metrics)}
    if as_json:
        console.print_json(json.dumps(info, default=list))
        return
    table = Table(title=f"refine-cli weights info: {target}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in info.items():
        if key == "classes" and value is not None:
            value = f"{len(value)}: {', '.join(value)}" if value else "(class-agnostic)"
        elif key == "size":
            value = _size(value)
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, default=list) if value else "-"
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)
