"""The course's `read_dataset.ZipDataset(data_path, num_stage)`: the preprocessed zip as a torch Dataset.

Item i is `(images, img_embedding, txt_embedding)`: a list of num_stage float tensors [3, 64 * 2**s, 64 * 2**s]
in [-1, 1], the L2-normalised image embedding and one of the image's caption embeddings, L2-normalised and
picked uniformly at random. Unlike the course's loader, which keeps 64 px copies and upsamples them, every stage
is made from the real 256 px images, all kept in memory as uint8 and loaded in seconds (`t2i/data/zip_dataset.py`).
"""
from t2i.data.zip_dataset import ZipDataset

__all__ = ["ZipDataset"]
