"""The synthetic raw dataset: layout, determinism, captions that name what is drawn, attributes read back."""
import io
import itertools
import os
import pickle
import zipfile

import numpy as np
import PIL.Image
import pytest

import synthetic_data
from t2i import clip_utils
from t2i.data import preprocessing as preprocess
from t2i.synthetic import world as sd

ALL_ATTRIBUTES = [dict(hair=h, background=b, skin=s, eyeglasses=g)
                  for h, b, s, g in itertools.product(sd.HAIR_COLOURS, sd.BACKGROUND_COLOURS, sd.SKIN_TONES,
                                                      sd.EYEGLASSES)]


@pytest.mark.parametrize("size", [256, 128, 64])
def test_every_attribute_combination_reads_back(size):
    for attributes in ALL_ATTRIBUTES:
        assert sd.read_attributes(sd.render(attributes, size)) == attributes
        assert sd.read_attributes(np.asarray(sd.render(attributes, size))) == attributes


def test_attributes_survive_jpeg_and_downsampling():
    for attributes in ALL_ATTRIBUTES:
        jpeg = io.BytesIO()
        sd.render(attributes, 512).save(jpeg, format="JPEG", quality=75)
        image = PIL.Image.open(jpeg).resize((64, 64), PIL.Image.BOX)
        assert sd.read_attributes(image) == attributes


def test_captions_name_every_attribute_and_vary():
    rng = np.random.default_rng(0)
    attributes = dict(hair="red", background="green", skin="tan", eyeglasses=True)
    captions = [sd.describe(attributes, rng) for _ in range(20)]
    for caption in captions:
        assert "red" in caption and "green" in caption and "tan" in caption and "glasses" in caption
        assert caption.endswith(".")
        clip_utils.tokenize([caption])
    assert len(set(captions)) > 10
    no_glasses = sd.describe(dict(attributes, eyeglasses=False), rng)
    assert any(word in no_glasses for word in ("no glasses", "not wearing"))


def test_long_captions_exceed_77_tokens_but_their_parts_fit():
    rng = np.random.default_rng(1)
    attributes = sd.sample_attributes(rng)
    caption = sd.describe(attributes, rng, long=True)
    with pytest.raises(ValueError):
        clip_utils.tokenize([caption])
    parts = preprocess.split_long_caption(caption)
    assert len(parts) > 4
    clip_utils.tokenize(parts)


def test_raw_layout_splits_and_ground_truth(synthetic_raw):
    paths, attributes, splits = synthetic_raw["paths"], synthetic_raw["attributes"], synthetic_raw["splits"]
    with zipfile.ZipFile(paths["source"]) as archive:
        names = set(archive.namelist())
        assert names == {f"image/{i}.jpg" for i in range(30)} | {f"celeba-caption/{i}.txt" for i in range(30)}
        for image_id in map(str, range(30)):
            lines = archive.read(f"celeba-caption/{image_id}.txt").decode().splitlines()
            assert len(lines) == 10 and all(line.strip() for line in lines)
            assert all(attributes[image_id]["hair"] in line for line in lines)
            with PIL.Image.open(io.BytesIO(archive.read(f"image/{image_id}.jpg"))) as image:
                assert image.size == (256, 256) and image.format == "JPEG"
                assert sd.read_attributes(image) == attributes[image_id]
    train = pickle.load(open(paths["train"], "rb"))
    test = pickle.load(open(paths["test"], "rb"))
    assert train == splits["train"] and test == splits["test"]
    assert len(train) == 22 and len(test) == 6 and not set(train) & set(test)
    assert all(isinstance(i, str) for i in train + test)
    assert os.path.dirname(paths["train"]) == os.path.dirname(paths["source"])


def test_deterministic_from_seed(tmp_path):
    def contents(seed, folder):
        result = sd.write_raw_dataset(str(tmp_path / folder), num_images=6, size=64, seed=seed)
        with zipfile.ZipFile(result["paths"]["source"]) as archive:
            return {name: archive.read(name) for name in archive.namelist()}, result["splits"]

    first, second, other = contents(3, "a"), contents(3, "b"), contents(4, "c")
    assert first == second
    assert first != other


def test_cli_folder_variant(tmp_path):
    synthetic_data.main(["--out", str(tmp_path), "--num_images", "5", "--num_train", "3", "--num_test", "2",
                         "--size", "64", "--image_dir", "images", "--caption_dir", "celea-caption", "--folder"])
    root = tmp_path / "multimodal_celeba_hq"
    assert sorted(os.listdir(root / "images")) == [f"{i}.jpg" for i in range(5)]
    assert sorted(os.listdir(root / "celea-caption")) == [f"{i}.txt" for i in range(5)]
    with pytest.raises(ValueError, match="--num_train"):
        sd.write_raw_dataset(str(tmp_path / "bad"), num_images=3, num_train=3, num_test=1)
