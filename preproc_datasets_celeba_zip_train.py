"""Preprocess the train split (4 captions an image by default, to fit Colab's RAM).

    python preproc_datasets_celeba_zip_train.py --source=./multimodal_celeba_hq.zip --dest train_data_6cap.zip \\
        --emb_dim 512 --transform=center-crop --width=256 --height=256

Raw multimodal_celeba_hq.zip -> a zip of 256 px PNGs with their CLIP image and caption embeddings. The pipeline
is shared with the other split's command: `t2i/data/preprocessing.py`.
"""
import click

from t2i.data import preprocessing
# The skeleton's helpers, beside convert_dataset as in the course's file (the shared pipeline calls them).
from t2i.data.preprocessing import make_transform, open_dataset, open_dest  # noqa: F401
from t2i.errors import T2IError
from train_utils import clip_preprocess, custom_reshape, error  # noqa: F401


@click.command()
@click.pass_context
@preprocessing.course_options("train")
def convert_dataset(ctx: click.Context, source: str, dest: str, max_images: int | None, transform: str,
                    resize_filter: str, width: int, height: int, emb_dim: int, **ours) -> None:
    """Preprocess the train split (4 captions an image by default, to fit Colab's RAM)."""
    # Problem 1-(a)
    try:
        preprocessing.convert("train", source=source, dest=dest, max_images=max_images, transform=transform,
                              resize_filter=resize_filter, width=width, height=height, emb_dim=emb_dim, **ours)
    except T2IError as err:
        error(str(err))


if __name__ == "__main__":
    convert_dataset()
