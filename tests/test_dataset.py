"""ZipDataset on preprocessed zips: items, stage images, the course loader's view of the same zip, errors."""
import io
import json
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from read_dataset import ZipDataset
from t2i.data.images import stage_images_from_uint8
from t2i.data.png import decode_png, encode_png
from t2i.errors import T2IError


def normalize(x):
    return x / x.norm(dim=-1, keepdim=True)


def course_loader_view(path):
    """What the course's loader does with a preprocessed zip: dataset.json, PIL-decoded PNGs, 64 px copies."""
    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read("dataset.json"))
        captions = dict(meta["clip_txt_features"])
        items = []
        for name, img_feature in meta["clip_img_features"]:
            with PIL.Image.open(io.BytesIO(archive.read(name))) as image:
                full = np.asarray(image.convert("RGB"))
                small = np.asarray(image.convert("RGB").resize((64, 64), PIL.Image.BICUBIC))
            items.append((full, small, normalize(torch.tensor(img_feature)), normalize(torch.tensor(captions[name]))))
    return items


@pytest.fixture(scope="module")
def train_set(preprocessed_zips):
    return ZipDataset(preprocessed_zips["train"], 3, progress=False)


def test_items_have_the_contract_shapes(train_set):
    assert len(train_set) == 22 and train_set.embedding_dim == 512 and train_set.image_size == 256
    images, img_embedding, txt_embedding = train_set[0]
    assert [tuple(x.shape) for x in images] == [(3, 64, 64), (3, 128, 128), (3, 256, 256)]
    assert all(x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1 for x in images)
    assert img_embedding.shape == txt_embedding.shape == (512,)
    assert torch.isclose(img_embedding.norm(), torch.tensor(1.0))
    assert torch.isclose(txt_embedding.norm(), torch.tensor(1.0))


def test_stage_images_are_area_downsampled_from_the_256px_image(train_set):
    images, _, _ = train_set[5]
    full = train_set.uint8_image(5).float() / 127.5 - 1
    torch.testing.assert_close(images[2], full)
    torch.testing.assert_close(images[1], F.avg_pool2d(full[None], 2)[0])
    torch.testing.assert_close(images[0], F.avg_pool2d(full[None], 4)[0])


def test_caption_is_one_of_the_images_captions_picked_uniformly(train_set):
    torch.manual_seed(0)
    captions = train_set.txt_embeddings_of(3)
    assert captions.shape == (train_set.caption_count(3), 512) == (4, 512)
    picks = []
    for _ in range(200):
        txt = train_set[3][2]
        matches = (captions - txt).abs().amax(dim=1) < 1e-6
        assert matches.sum() == 1
        picks.append(int(matches.nonzero()))
    counts = np.bincount(picks, minlength=4)
    assert counts.min() > 25
    torch.testing.assert_close(normalize(train_set.txt_embeddings_of(3, normalized=False)), captions)


def test_uint8_mode_and_gpu_style_stage_images(train_set):
    train_set.return_uint8 = True
    try:
        batch = next(iter(DataLoader(train_set, batch_size=4)))
    finally:
        train_set.return_uint8 = False
    images, img_emb, txt_emb = batch
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 256, 256)
    assert img_emb.shape == txt_emb.shape == (4, 512)
    stages = stage_images_from_uint8(images, 4)
    assert [tuple(s.shape) for s in stages] == [(4, 3, 64, 64), (4, 3, 128, 128), (4, 3, 256, 256), (4, 3, 512, 512)]
    assert all(s.min() >= -1 and s.max() <= 1 for s in stages)
    float_items = [train_set[i][0] for i in range(4)]
    for stage in range(3):
        torch.testing.assert_close(stages[stage], torch.stack([item[stage] for item in float_items]))


def test_float_batches_through_a_dataloader(train_set):
    images, img_emb, txt_emb = next(iter(DataLoader(train_set, batch_size=6, shuffle=True)))
    assert [tuple(x.shape) for x in images] == [(6, 3, 64, 64), (6, 3, 128, 128), (6, 3, 256, 256)]
    assert img_emb.shape == txt_emb.shape == (6, 512)


def test_course_loader_reads_the_same_data(preprocessed_zips):
    ours = ZipDataset(preprocessed_zips["test"], 3, progress=False)
    course = course_loader_view(preprocessed_zips["test"])
    assert len(course) == len(ours) == 6
    for index, (full, small, img_embedding, captions) in enumerate(course):
        np.testing.assert_array_equal(ours.uint8_image(index).permute(1, 2, 0).numpy(), full)
        assert small.shape == (64, 64, 3)
        torch.testing.assert_close(ours.img_embedding_of(index), img_embedding)
        torch.testing.assert_close(ours.txt_embeddings_of(index), captions)
        assert ours.caption_count(index) == 10


def test_json_fallback_and_pillow_written_pngs(preprocessed_zips, tmp_path):
    """A zip like the course script's: only dataset.json, PNGs written by Pillow with filtering."""
    ours = ZipDataset(preprocessed_zips["test"], 2, progress=False)
    course_like = tmp_path / "course.zip"
    with zipfile.ZipFile(preprocessed_zips["test"]) as src, zipfile.ZipFile(course_like, "w") as dst:
        for name in src.namelist():
            if name.endswith(".png"):
                png = io.BytesIO()
                PIL.Image.fromarray(decode_png(src.read(name))).save(png, format="png", compress_level=6)
                dst.writestr(name, png.getvalue())
            elif name == "dataset.json":
                dst.writestr(name, src.read(name))
    theirs = ZipDataset(str(course_like), 2, progress=False)
    assert len(theirs) == len(ours) and theirs.embedding_dim == 512
    np.testing.assert_array_equal(theirs.images, ours.images)
    torch.testing.assert_close(theirs.txt_emb, ours.txt_emb)
    torch.testing.assert_close(theirs.img_emb, ours.img_emb)


def test_png_codec_round_trip():
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    data = encode_png(image)
    with PIL.Image.open(io.BytesIO(data)) as pil_image:
        assert pil_image.size == (48, 32)
        np.testing.assert_array_equal(np.asarray(pil_image), image)
    np.testing.assert_array_equal(decode_png(data), image)
    grey = io.BytesIO()
    PIL.Image.fromarray(image[..., 0]).save(grey, format="png")
    np.testing.assert_array_equal(decode_png(grey.getvalue()), np.repeat(image[..., :1], 3, axis=2))


def test_missing_or_corrupt_zip_errors(tmp_path, preprocessed_zips):
    with pytest.raises(T2IError, match="nope.zip: no such file"):
        ZipDataset(str(tmp_path / "nope.zip"), 3)
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"this is not a zip")
    with pytest.raises(T2IError, match="garbage.zip: not a readable zip"):
        ZipDataset(str(garbage), 3)
    bare = tmp_path / "bare.zip"
    with zipfile.ZipFile(bare, "w") as archive:
        archive.writestr("00000/img00000000.png", encode_png(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(T2IError, match="bare.zip: corrupt or not a preprocessed zip"):
        ZipDataset(str(bare), 3)
    truncated = tmp_path / "truncated.zip"
    data = open(preprocessed_zips["test"], "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(T2IError, match="truncated.zip"):
        ZipDataset(str(truncated), 3)
