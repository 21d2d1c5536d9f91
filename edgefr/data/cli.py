"""`edgefr align`: raw photos -> aligned 112x112 face crops."""

import click


@click.command("align")
@click.option("--src", "src", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder of raw photos (sub-folders, e.g. one per identity, are kept).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for the aligned crops.")
def align_command(src: str, out: str) -> None:
    """Detect faces (YuNet) and write aligned 112x112 crops."""
    from edgefr.data.align import align_folder

    report = align_folder(src, out)
    click.echo(f"aligned {report.aligned} image(s) into {out}")
    if report.no_face:
        click.echo(f"no face found in {len(report.no_face)} image(s): listed in {out}/no_face.txt")
    if report.unreadable:
        click.echo(f"{len(report.unreadable)} unreadable image(s): listed in {out}/unreadable.txt")
