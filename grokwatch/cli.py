"""The command line: maps every error to one line on stderr and an exit code (0/1/2)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from grokwatch import __version__
from grokwatch.errors import GrokwatchError, UsageError

SUBCOMMANDS = ("watch", "ui", "status", "export", "demo", "probe")


class WatchByDefault(click.Group):
    """`grokwatch [RUN_DIR]` means `grokwatch watch [RUN_DIR]`; a dir named `ui` is `./ui`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Insert the default `watch` command unless a subcommand or top-level flag comes first."""
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "--version")):
            args = ["watch", *args]
        return super().parse_args(ctx, args)


def _fail(exc: GrokwatchError, debug: bool) -> None:
    if debug:
        raise exc
    click.echo(f"grokwatch: error: {exc}", err=True)
    sys.exit(2 if isinstance(exc, UsageError) else 1)


@click.group(cls=WatchByDefault, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="grokwatch")
def main() -> None:
    """Watch an MoE training run's checkpoints and track pathway metrics live.

    `grokwatch RUN_DIR` watches RUN_DIR (default `.`): daemon + TUI on a terminal, headless with
    --headless, --once, or when stdout is not a terminal.
    """


def _watch_options(fn: Any) -> Any:
    options = [
        click.option("--probe", type=click.Path(path_type=Path), help="Probe file (JSONL/text)."),
        click.option("--db", type=click.Path(path_type=Path), help="Store path."),
        click.option("--device", help="auto | cpu | cuda | cuda:N  [default: auto]"),
        click.option("--headless", is_flag=True, default=None, help="No TUI; log lines only."),
        click.option("--once", is_flag=True, default=None, help="Process what is there, exit."),
        click.option("--poll", type=float, help="Poll every SECONDS (network filesystems)."),
        click.option("--ready-marker", help="File whose presence marks a checkpoint complete."),
        click.option("--tau", type=float, help="Pathway mass threshold  [default: 0.7]"),
        click.option("--max-tokens", type=int, help="Truncate samples  [default: 2048]"),
        click.option("--pair-bound", type=int, help="Sample pairs above this group size [512]"),
        click.option("--batch-size", type=int, help="Samples per forward pass  [default: 16]"),
        click.option("--threads", type=int, help="CPU threads for torch and distances."),
        click.option("--on-alert", help="Shell command run per alert (fields in env vars)."),
        click.option("--trust-remote-code", is_flag=True, default=None, help="Allow model code."),
        click.option("--config", type=click.Path(path_type=Path), help="grokwatch.toml to use."),
        click.option("--debug", is_flag=True, default=None, help="Show tracebacks."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command()
@click.argument("run_dir", required=False, default=".", type=click.Path(path_type=Path))
@_watch_options
def watch(run_dir: Path, **flags: Any) -> None:
    """Watch RUN_DIR for checkpoints (the default command)."""
    from grokwatch.config import resolve_settings

    debug = bool(flags.get("debug"))
    try:
        settings = resolve_settings(run_dir, flags)
        if not run_dir.is_dir():
            raise UsageError(f"{run_dir}: not a directory; pass the folder training writes into")
        if settings.headless or settings.once or not sys.stdout.isatty():
            from grokwatch.daemon import run_daemon

            sys.exit(run_daemon(settings))
        from grokwatch.launch import run_with_ui

        sys.exit(run_with_ui(settings))
    except GrokwatchError as exc:
        _fail(exc, debug)


@main.command()
@click.argument("target", required=False, type=click.Path(path_type=Path))
@click.option("--db", type=click.Path(path_type=Path), help="Store path.")
@click.option("--run", "run_id", type=int, help="Run id (default: latest).")
@click.option("--theme", help="Theme name.")
def ui(target: Path | None, db: Path | None, run_id: int | None, theme: str | None) -> None:
    """Open a store: live while its daemon runs, else a review of its history."""
    from grokwatch.paths import existing_store

    try:
        store = existing_store(target, db)
        from grokwatch.ui.app import run_ui

        sys.exit(run_ui(store, run_id=run_id, theme=theme))
    except GrokwatchError as exc:
        _fail(exc, False)


@main.command()
@click.argument("target", required=False, type=click.Path(path_type=Path))
@click.option("--db", type=click.Path(path_type=Path), help="Store path.")
@click.option("--run", "run_id", type=int, help="Run id (default: latest).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(target: Path | None, db: Path | None, run_id: int | None, as_json: bool) -> None:
    """Heartbeat, queue, last checkpoint, latest metrics per group, recent alerts."""
    import json

    from grokwatch.paths import existing_store
    from grokwatch.reader import Reader
    from grokwatch.status import collect_status, format_status

    try:
        reader = Reader(existing_store(target, db))
        data = collect_status(reader, run_id)
        click.echo(json.dumps(data, indent=2) if as_json else format_status(data), nl=as_json)
    except GrokwatchError as exc:
        _fail(exc, False)


@main.command()
@click.argument("target", required=False, type=click.Path(path_type=Path))
@click.option("--db", type=click.Path(path_type=Path), help="Store path.")
@click.option(
    "--table",
    type=click.Choice(["metrics", "samples", "checkpoints", "alerts"]),
    default="metrics",
    show_default=True,
)
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="File (default: stdout).")
@click.option("--run", "run_id", type=int, help="Run id (default: latest).")
def export(
    target: Path | None,
    db: Path | None,
    table: str,
    fmt: str,
    output: Path | None,
    run_id: int | None,
) -> None:
    """Export a table as CSV or JSONL (NaN written as empty / null)."""
    from grokwatch.export import export_rows, write_rows
    from grokwatch.paths import existing_store
    from grokwatch.reader import Reader

    try:
        reader = Reader(existing_store(target, db))
        rows = export_rows(reader, table, run_id)
        if output is None:
            write_rows(rows, table, fmt, sys.stdout)
        else:
            with output.open("w", encoding="utf-8", newline="") as out:
                write_rows(rows, table, fmt, out)
    except GrokwatchError as exc:
        _fail(exc, False)


@main.command()
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@click.option("--headless", is_flag=True, help="One line per checkpoint instead of the TUI.")
@click.option("--steps", type=int, help="Training steps (default: the full grokking run).")
@click.option("--short", is_flag=True, help="A few steps only (smoke test).")
@click.option("--threads", type=int, default=None, help="Threads for the trainer.")
def demo(
    directory: Path | None, headless: bool, steps: int | None, short: bool, threads: int | None
) -> None:
    """Train the example grokking MoE and watch it live."""
    from grokwatch.demo import run_demo

    try:
        sys.exit(run_demo(directory, headless=headless, steps=steps, short=short, threads=threads))
    except GrokwatchError as exc:
        _fail(exc, False)


@main.group()
def probe() -> None:
    """Probe files."""


@probe.command("make")
@click.argument("corpus", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("--per-group", type=int, default=64, show_default=True)
@click.option("--group-field", default="group", show_default=True)
@click.option("--text-field", default="text", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def probe_make(
    corpus: Path, output: Path, per_group: int, group_field: str, text_field: str, seed: int
) -> None:
    """Sample N training examples per group from a JSONL/text corpus into a probe file."""
    from grokwatch.probe_sources import make_probe

    try:
        counts = make_probe(corpus, output, per_group, group_field, text_field, seed)
        summary = ", ".join(f"{g} {n}" for g, n in counts.items())
        click.echo(f"wrote {sum(counts.values())} samples to {output} ({summary})")
    except GrokwatchError as exc:
        _fail(exc, False)


if __name__ == "__main__":
    main()
