"""The `sftlab` command line: `base` holds the apps and error handling, one module per command group registers
its commands on them (importing this package registers them all, in the order `--help` lists them)."""

# isort: off
from sftlab.cli import runs, recipes, data, curate, serving, models  # noqa: F401  (each registers its commands)
# isort: on
from sftlab.cli.base import app, console, guarded, os_error_message

__all__ = ["app", "console", "guarded", "os_error_message"]
