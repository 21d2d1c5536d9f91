"""`edgefr models`: the registered architectures with their size."""

import click


@click.command("models")
@click.option("--json", "as_json", metavar="NAME", help="Print the architecture JSON of one registered model.")
def models_command(as_json: str | None) -> None:
    """List registered architectures (params, MFLOPs), or print one as arch JSON."""
    from edgefr.space import count_flops, count_params, create_model, list_models, resolve_arch

    if as_json:
        click.echo(resolve_arch(as_json).to_json())
        return
    click.echo(f"{'name':32s} {'params':>9s} {'MFLOPs':>8s}  depths       widths")
    for name in list_models():
        model = create_model(name)
        arch = model.arch
        click.echo(f"{name:32s} {count_params(model) / 1e6:8.3f}M {count_flops(model) / 1e6:8.1f}  "
                   f"{str(arch.depths()):12s} {arch.widths()}")
