"""`edgefr devices`."""

import click


@click.command("devices")
def devices_command() -> None:
    """List the device files in devices/ (name, transport, runtime, dtype, threads, metric)."""
    from edgefr.devices import list_devices
    from edgefr.paths import devices_dir

    rows = [(d.name, d.transport, d.runtime, d.dtype, str(d.threads), d.metric, d.description) for d in list_devices()]
    header = ("name", "transport", "runtime", "dtype", "threads", "metric", "description")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header) - 1)]
    for row in [header] + rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[-1])
    click.echo(f"\n{len(rows)} devices in {devices_dir()}; ad-hoc targets: ssh://user@host --runtime R, adb:SERIAL")
