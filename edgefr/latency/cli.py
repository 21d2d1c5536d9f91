"""`edgefr profile` and `edgefr latency`."""

from __future__ import annotations

from pathlib import Path

import click

DEVICE_HELP = "Device name in devices/, a .toml file, ssh://user@host[:port] or adb:SERIAL."


@click.command("profile")
@click.option("--device", "device_spec", required=True, help=DEVICE_HELP)
@click.option("--runtime", type=click.Choice(["onnxruntime", "tflite"]), help="Runtime for ssh:// and adb: targets.")
@click.option("--dtype", type=click.Choice(["fp32", "int8"]), help="Model dtype for ssh:// and adb: targets.")
@click.option("--arch", "archs", multiple=True,
              help="Profile only the blocks of these architectures (names or JSON files); default: the whole space.")
@click.option("--limit", type=int, help="Profile at most this many blocks (a quick partial table).")
@click.option("--calibration-nets", type=int, default=None,
              help="Whole nets measured to calibrate block sums [default: 40]; rerunning `profile` on a complete "
                   "table only recalibrates it.")
@click.option("--embedding", default=128, show_default=True, type=click.Choice(["128", "512"]), help="Embedding size.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Table file [latency_tables/DEVICE.json].")
@click.option("--fresh", is_flag=True, help="Ignore an existing or partial table and measure everything again.")
@click.option("--seed", default=0, show_default=True, help="Seed of the measurement order.")
def profile_command(device_spec, runtime, dtype, archs, limit, calibration_nets, embedding, out, fresh, seed) -> None:
    """Measure every block of the search space on a device; write its latency table.

    Each block is converted with the flow `edgefr export` uses for the device's runtime and dtype, measured
    with the device's protocol (warmup, trials, median, randomized passes, re-measuring disagreeing entries),
    then whole nets calibrate the block sums. Interrupted runs resume from latency_tables/DEVICE.partial.json.
    """
    from edgefr.devices import resolve_device
    from edgefr.latency.lut import table_path
    from edgefr.latency.profile import profile_device
    from edgefr.space import MFN_SPACE, resolve_arch

    device = resolve_device(device_spec, runtime, dtype)
    blocks = None
    if archs:
        blocks = list({s.key: s for a in archs for s in resolve_arch(a).block_specs()}.values())
    if limit:
        blocks = (blocks or MFN_SPACE.all_block_specs(embeddings=(int(embedding),)))[:limit]
    out = out or table_path(device.table_name)
    calibration = {} if calibration_nets is None else {"calibration_nets": calibration_nets}
    table = profile_device(device, MFN_SPACE, out, blocks=blocks, embedding=int(embedding), seed=seed, fresh=fresh,
                           log=click.echo, **calibration)
    click.echo(f"wrote {out}: {len(table.entries)} blocks, {table.device['runtime']} "
               f"{table.device['runtime_version']} {table.device['dtype']}, cpu {table.device['cpu']!r}")


@click.command("latency")
@click.option("--arch", "arch_spec", required=True, help="Registered architecture name or arch JSON file.")
@click.option("--device", "device_spec", required=True, help=DEVICE_HELP)
@click.option("--runtime", type=click.Choice(["onnxruntime", "tflite"]), help="Runtime for ssh:// and adb: targets.")
@click.option("--dtype", type=click.Choice(["fp32", "int8"]), help="Model dtype for ssh:// and adb: targets.")
@click.option("--table", type=click.Path(dir_okay=False, path_type=Path),
              help="Latency table [latency_tables/DEVICE.json].")
@click.option("--measure", is_flag=True, help="Also convert the whole net, measure it on the device, print the error.")
def latency_command(arch_spec, device_spec, runtime, dtype, table, measure) -> None:
    """Predict an architecture's latency on a device (per-block breakdown); --measure compares with a real run."""
    from edgefr.devices import resolve_device
    from edgefr.latency import LatencyPredictor, load_device_table
    from edgefr.latency.profile import measure_network
    from edgefr.space import resolve_arch

    arch = resolve_arch(arch_spec)
    device = resolve_device(device_spec, runtime, dtype)
    predictor = LatencyPredictor(load_device_table(device, table))
    prediction = predictor.predict(arch)
    click.echo(f"{arch.name} on {device.name} ({device.runtime} {device.dtype}, {device.threads} thread(s), "
               f"{device.metric}); table {predictor.table.where}")
    click.echo(f"{'#':>3s}  {'block':46s} {'raw ms':>8s} {'ms':>8s}")
    for i, block in enumerate(prediction.blocks):
        click.echo(f"{i:3d}  {block.spec.key:46s} {block.raw_ms:8.3f} {block.ms:8.3f}")
    click.echo(f"     {'whole-net offset':46s} {'':8s} {prediction.offset_ms:8.3f}")
    note = "" if prediction.calibrated else "  (uncalibrated: raw block sum)"
    click.echo(f"predicted: {prediction.total_ms:.3f} ms  (raw block sum {prediction.raw_sum_ms:.3f} ms){note}")
    if measure:
        measured = measure_network(device, arch)
        error = 100 * (prediction.total_ms - measured) / measured
        click.echo(f"measured:  {measured:.3f} ms  error {error:+.1f}%")
