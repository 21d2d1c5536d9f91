"""`edgefr teacher ...`: teacher models and their cached embeddings."""

import click

PREPROCESSING_HELP = ('Override the model\'s input convention, as JSON: {"channel_order": "RGB", "mean": 127.5, '
                      '"std": 128, "layout": "NCHW", "size": 112}.')


@click.group("teacher")
def teacher_group() -> None:
    """Teacher models: compute and cache their embeddings of a face set."""


@teacher_group.command("embed")
@click.option("--teacher", "teacher_spec", default="sface", show_default=True,
              help="Registered name (sface, faceplugin), model file, or a+b ensemble.")
@click.option("--data", "data", required=True, help="ImageFolder of aligned faces (one sub-folder per identity).")
@click.option("--view", type=click.Choice(["center", "flip"]), default="center", show_default=True,
              help="Embed the images as they are, or mirrored.")
@click.option("--preprocessing", default=None, help=PREPROCESSING_HELP)
def embed_command(teacher_spec: str, data: str, view: str, preprocessing: str | None) -> None:
    """Compute (or reuse) a teacher's embeddings of a face set and print where they are cached."""
    from edgefr.data.faces import ImageFolderFaces
    from edgefr.teachers import cached_embeddings, load_teacher
    from edgefr.teachers.cache import embeddings_cache_path

    teacher = load_teacher(teacher_spec, preprocessing)
    dataset = ImageFolderFaces(data)
    embeddings = cached_embeddings(teacher, dataset, view)
    if dataset.skipped:
        click.echo(f"skipped {len(dataset.skipped)} unreadable image(s), e.g. {dataset.skipped[0]}")
    click.echo(f"{embeddings_cache_path(teacher, dataset, view)}: {embeddings.shape[0]} x {embeddings.shape[1]} "
               f"float32 ({teacher.name}, {view})")
