"""`charrnn corpus` (named corpora) and `charrnn cache` (encoded texts, stdin copies, downloads)."""

from __future__ import annotations

import json

import typer

from charrnn.cli.common import friendly, json_option, parse_duration, write_stdout
from charrnn.errors import CharRNNError, UsageError

HELP = {"help_option_names": ["-h", "--help"]}
corpus_app = typer.Typer(
    help="Named corpora: well-known public-domain texts, usable anywhere a file goes.",
    no_args_is_help=True,
    context_settings=HELP,
)
cache_app = typer.Typer(
    help="The cache of encoded texts, standard-input copies and downloads: see it, prune it, clear it.",
    no_args_is_help=True,
    context_settings=HELP,
)


@corpus_app.command("list")
@friendly
def corpus_list(as_json: bool = json_option("Machine-readable list on stdout.")) -> None:
    """The corpora charrnn knows by name, and whether each is downloaded. Example:

    charrnn corpus list --json | jq -r '.[].name'
    """
    from charrnn.cli import views
    from charrnn.data.catalog import catalog_rows

    rows = catalog_rows()
    if as_json:
        write_stdout(json.dumps(rows, indent=2) + "\n")
    else:
        views.corpus_table(rows)


@corpus_app.command("get")
@friendly
def corpus_get(name: str = typer.Argument(..., help="A name from charrnn corpus list.")) -> None:
    """Download a named corpus into the cache (checked against its sha256) and print its path. Example:

    CHARRNN_MIRROR=/mnt/corpora charrnn corpus get tinyshakespeare
    """
    from charrnn.cli import display
    from charrnn.data.catalog import CATALOG
    from charrnn.data.sources import BUILTIN, fetch_named

    if name not in CATALOG:
        raise UsageError(f"{name}: not a known corpus; the names are {', '.join(CATALOG)}")
    if name == BUILTIN:
        display.note("builtin is assembled from the Python installation; there is nothing to download")
        return
    progress = display.TransferProgress()
    try:
        path = fetch_named(name, progress)
    finally:
        progress.close()
    write_stdout(f"{path}\n")


@cache_app.command("list")
@friendly
def cache_list(as_json: bool = json_option("Machine-readable list on stdout.")) -> None:
    """Each entry with its size, when it was last used and whether a running command reads it."""
    from charrnn.cli import views
    from charrnn.data import cache

    rows = [e.to_json() for e in cache.entries()]
    if as_json:
        listing = {"root": str(cache.root()), "max_size": cache.max_size(), "entries": rows}
        write_stdout(json.dumps(listing, indent=2) + "\n")
    else:
        views.cache_table(rows, str(cache.root()), cache.max_size())


@cache_app.command("prune")
@friendly
def cache_prune(
    older_than: str | None = typer.Option(None, help="Remove entries not used for this long: 30d, 12h, 90m."),
    max_size: str | None = typer.Option(None, help="Then remove the least recently used down to this size: 2G."),
) -> None:
    """Remove old entries, or the least recently used beyond a size. Entries in use stay."""
    from charrnn.cli import display
    from charrnn.data import cache

    if older_than is None and max_size is None:
        raise UsageError("give --older-than, --max-size or both (charrnn cache clear removes everything)")
    removed, failed = cache.prune(
        parse_duration(older_than), cache.parse_size(max_size, "--max-size") if max_size else None
    )
    display.note(f"removed {len(removed)} entries, {sum(e.size for e in removed) / 1e6:,.1f} MB")
    _report_failures(failed, removed)


@cache_app.command("clear")
@friendly
def cache_clear() -> None:
    """Remove every entry that no running command is reading."""
    from charrnn.cli import display
    from charrnn.data import cache

    removed, failed = cache.prune(older_than=-1.0)
    kept = [e for e in cache.entries() if e.path not in {f.path for f, _ in failed}]
    display.note(
        f"removed {len(removed)} entries, {sum(e.size for e in removed) / 1e6:,.1f} MB"
        + (f"; {len(kept)} in use or under an hour old kept" if kept else "")
    )
    _report_failures(failed, removed)


def _report_failures(failed: list, removed: list) -> None:
    """Entries that could not be removed: named with the reason; exit 1 when none could be."""
    from charrnn.data import cache

    if not failed:
        return
    entry, reason = failed[0]
    message = f"{cache.root()}: could not remove {len(failed)} entries ({entry.path.name}: {reason}); check the folder's permissions"
    if removed:
        from charrnn.cli import display

        display.note(message)
        return
    raise CharRNNError(message)
