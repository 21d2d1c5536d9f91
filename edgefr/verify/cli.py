"""`edgefr eval`: face verification accuracy of any model on LFW-style or sampled pairs."""

import click

from edgefr.teachers.cli import PREPROCESSING_HELP


@click.command("eval")
@click.option("--model", "model_spec", required=True,
              help="Registered teacher (sface, faceplugin), .onnx/.tflite/.pt file, or a+b ensemble.")
@click.option("--pairs", "pairs_txt", default=None, help="LFW-format pairs.txt (default: the shared LFW set).")
@click.option("--images", default=None, help="Image root for --pairs (default: the folder holding pairs.txt).")
@click.option("--imagefolder", default=None, help="Sample pairs from this ImageFolder instead (e.g. CelebA).")
@click.option("--bin", "bin_file", default=None, help="An insightface verification .bin (e.g. agedb_30.bin) instead.")
@click.option("--n-pairs", default=3000, show_default=True, help="Pairs to sample with --imagefolder.")
@click.option("--seed", default=0, show_default=True, help="Sampling seed for --imagefolder.")
@click.option("--flip", is_flag=True, help="Add the mirrored crop's embedding (usual +0.1-0.2 pp).")
@click.option("--preprocessing", default=None, help=PREPROCESSING_HELP)
@click.option("--batch-size", default=128, show_default=True, help="Images per forward pass.")
@click.option("--json", "json_out", default=None, help="Also write the result as JSON to this file.")
def eval_command(model_spec: str, pairs_txt: str | None, images: str | None, imagefolder: str | None,
                 bin_file: str | None, n_pairs: int, seed: int, flip: bool, preprocessing: str | None,
                 batch_size: int, json_out: str | None) -> None:
    """Measure a model's face verification accuracy on pairs.

    10-fold accuracy (threshold chosen on 9 folds), cosine threshold and TAR@FAR; LFW by default.
    """
    import json
    import tempfile
    from pathlib import Path

    from edgefr.data.insightface import bin_to_pairset
    from edgefr.errors import EdgefrError
    from edgefr.verify import load_embedder, verify_pairs

    if sum(bool(source) for source in (pairs_txt, imagefolder, bin_file)) > 1:
        raise EdgefrError("--pairs, --imagefolder and --bin: pass only one of them")
    embedder = load_embedder(model_spec, preprocessing)
    if bin_file:
        with tempfile.TemporaryDirectory(prefix="edgefr-bin-") as unpacked:
            result = verify_pairs(embedder, bin_to_pairset(bin_file, unpacked), flip=flip, batch_size=batch_size)
    else:
        result = verify_pairs(embedder, _pairs(pairs_txt, images, imagefolder, n_pairs, seed), flip=flip,
                              batch_size=batch_size)
    click.echo(f"model      {result.model}")
    click.echo(f"pairs      {result.pairs} ({result.n_pairs}){'  +flip' if flip else ''}")
    click.echo(f"accuracy   {100 * result.accuracy:.2f} +- {100 * result.accuracy_std:.2f} %  (10-fold)")
    click.echo(f"threshold  {result.threshold:.4f}  (cosine similarity)")
    for far, tar in result.tar_at_far.items():
        click.echo(f"TAR@FAR={far:<6g} {100 * tar:.2f} %")
    if json_out:
        Path(json_out).write_text(json.dumps(result.to_dict(), indent=2) + "\n")


def _pairs(pairs_txt: str | None, images: str | None, imagefolder: str | None, n_pairs: int, seed: int):
    """The PairSet the options ask for; LFW from the shared folder by default."""
    from pathlib import Path

    from edgefr.data.pairs import read_lfw_pairs, sample_imagefolder_pairs
    from edgefr.errors import EdgefrError
    from edgefr.paths import shared_dir

    if imagefolder:
        return sample_imagefolder_pairs(imagefolder, n_pairs, seed)
    if pairs_txt is None:
        pairs_txt = str(shared_dir() / "faces" / "lfw" / "pairs.txt")
        if not Path(pairs_txt).is_file():
            raise EdgefrError(f"no pairs given and no LFW at {pairs_txt}; pass --pairs PAIRS.txt --images DIR, "
                              "--imagefolder DIR or --bin FILE (or set EDGEFR_SHARED)")
    return read_lfw_pairs(pairs_txt, images or Path(pairs_txt).parent)
