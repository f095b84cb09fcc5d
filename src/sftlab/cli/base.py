"""What every command shares: the Typer apps, the console, quiet library logging and one-line errors."""

from __future__ import annotations

import errno
import functools
import logging
import os

import typer
from rich.console import Console

from sftlab.errors import SftlabError


def os_error_message(e: OSError) -> str:
    """A user-facing sentence for a failed file operation: what failed, on which path, and what is kept."""
    where = f" ({e.filename})" if e.filename else ""
    if e.errno == errno.ENOSPC:
        return (f"no space left on the device{where}; nothing already written was lost (outputs are written "
                "atomically, curation keeps every finished prompt): free space and re-run the same command")
    return f"{e.strerror or e}{where}"


def guarded(fn):
    """Every command: an error sftlab raised on purpose, or a failed file operation, is one line and exit 2."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SftlabError as e:
            fail(e)
        except OSError as e:
            fail(os_error_message(e))

    return run


class GuardedTyper(typer.Typer):
    """A Typer app whose commands all go through `guarded`."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)
        return lambda fn: register(guarded(fn)) and fn


app = GuardedTyper(help="sftlab: supervised fine-tuning end to end.", no_args_is_help=True,
                   pretty_exceptions_enable=False)
data_app = GuardedTyper(help="Inspect and convert datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
curate_app = GuardedTyper(help="Make SFT data: distill from a teacher, best-of-k rejection sampling, filter a pool.",
                          no_args_is_help=True)
app.add_typer(curate_app, name="curate")
console = Console()


def quiet() -> None:
    """Keep library warnings, progress bars and verbose logs out of the command's output."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def fail(e: Exception | str) -> None:
    """One red `error: ...` line and exit status 2."""
    # markup off: error text may contain [brackets]; soft wrap: keep paths and messages on one line
    console.print(f"error: {e}", soft_wrap=True, markup=False, style="red")
    raise typer.Exit(2)
