"""The `edgefr` command line. Each stage's commands live in its subpackage's `cli.py`; heavy imports
(torch, runtimes) happen inside the commands so that `edgefr --help` stays fast."""

from __future__ import annotations

import sys

import click

from edgefr import __version__
from edgefr.errors import EdgefrError


def invoke_reporting_errors(invoke, ctx: click.Context):
    """Run a click command's invoke, turning expected failures into one-line errors (exit 2) and Ctrl-C into a
    short note (exit 130)."""
    try:
        return invoke(ctx)
    except EdgefrError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted: checkpoints written so far are kept; rerun with --resume to continue", err=True)
        sys.exit(130)


class EdgefrGroup(click.Group):
    """The `edgefr` group: its subcommands' expected failures are one-line errors."""

    def invoke(self, ctx: click.Context):
        return invoke_reporting_errors(super().invoke, ctx)


class EdgefrCommand(click.Command):
    """A standalone command (the benchmarks) whose expected failures are one-line errors, as in `edgefr`."""

    def invoke(self, ctx: click.Context):
        return invoke_reporting_errors(super().invoke, ctx)


@click.group(cls=EdgefrGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgefr")
def cli() -> None:
    """Turn a big face-recognition model into a small one that meets a latency budget on a device.

    \b
    Workflow:
      edgefr profile --device D           measure every block of the search space on device D
      edgefr search --latency-ms 10       search + distill a student that meets the budget
      edgefr export --format tflite       quantize, export and check the student on the device
    """


def _register() -> None:
    from edgefr.devices.cli import devices_command
    from edgefr.distill.cli import distill_command, train_command
    from edgefr.export.cli import export_command
    from edgefr.latency.cli import latency_command, profile_command
    from edgefr.search.cli import search_command
    from edgefr.space.cli import models_command
    from edgefr.data.cli import align_command
    from edgefr.teachers.cli import teacher_group
    from edgefr.verify.cli import eval_command

    for command in (devices_command, profile_command, latency_command, search_command, models_command, distill_command,
                    train_command, align_command, teacher_group, eval_command, export_command):
        cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="edgefr")


if __name__ == "__main__":
    main()
