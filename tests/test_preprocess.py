"""Raw synthetic dataset -> preprocessed zips: splits, captions, embeddings recomputed by hand, bad input."""
import io
import json
import os
import pickle
import shutil
import sys
import zipfile

import click
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import preprocess as run_command

from t2i import clip_utils
from t2i.data import preprocessing as preprocess
from t2i.data.png import decode_png

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def read_npz(path):
    with zipfile.ZipFile(path) as archive, np.load(io.BytesIO(archive.read(preprocess.EMBEDDINGS_MEMBER))) as npz:
        return {key: npz[key] for key in npz.files}


def run_main(argv, split="train"):
    """The preprocessing command, returning the error line it prints (or None when it succeeded)."""
    import contextlib
    import io

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            run_command(argv, split)
    except SystemExit as exit_:
        assert exit_.code == 1
        return stderr.getvalue().strip().splitlines()[-1]
    finally:
        sys.stderr.write(stderr.getvalue())  # warnings stay visible to capsys
    return None


def flags(source, dest, clip_path, *extra):
    return ["--source", str(source), "--dest", str(dest), "--clip_model", clip_path, "--device", "cpu",
            "--num_workers", "2", *extra]


@pytest.fixture(scope="module")
def clip_model(tiny_clip_path):
    return clip_utils.load_clip(tiny_clip_path, "cpu")


def test_ids_follow_the_split_pickles(preprocessed_zips, synthetic_raw):
    for split in ("train", "test"):
        npz = read_npz(preprocessed_zips[split])
        assert list(npz["ids"]) == synthetic_raw["splits"][split]
        assert list(npz["names"]) == [preprocess.archive_name(i) for i in range(len(npz["ids"]))]
    train, test = (set(read_npz(preprocessed_zips[s])["ids"]) for s in ("train", "test"))
    assert not train & test


def test_caption_counts(preprocessed_zips):
    train, test = read_npz(preprocessed_zips["train"]), read_npz(preprocessed_zips["test"])
    assert np.all(np.diff(train["txt_offsets"]) == 4)
    assert np.all(np.diff(test["txt_offsets"]) == 10)
    assert train["txt_emb"].shape == (4 * len(train["ids"]), 512)
    assert train["img_emb"].dtype == np.float32 and train["txt_emb"].dtype == np.float32


def test_zip_members_and_course_json(preprocessed_zips):
    with zipfile.ZipFile(preprocessed_zips["test"]) as archive:
        names = archive.namelist()
        meta = json.loads(archive.read("dataset.json"))
        npz = read_npz(preprocessed_zips["test"])
        pngs = [n for n in names if n.endswith(".png")]
        assert pngs == [f"00000/img{i:08d}.png" for i in range(6)]
        for name in pngs:
            with PIL.Image.open(io.BytesIO(archive.read(name))) as image:
                assert image.format == "PNG" and image.mode == "RGB" and image.size == (256, 256)
    assert [n for n, _ in meta["clip_img_features"]] == pngs
    assert [n for n, _ in meta["clip_txt_features"]] == pngs
    np.testing.assert_array_equal(np.array([f for _, f in meta["clip_img_features"]], dtype=np.float32),
                                  npz["img_emb"])
    np.testing.assert_array_equal(np.concatenate([np.array(f, dtype=np.float32) for _, f in
                                                  meta["clip_txt_features"]]), npz["txt_emb"])
    assert meta["preprocess"]["split"] == "test" and meta["preprocess"]["num_captions"] is None


@torch.no_grad()
def test_embeddings_equal_a_direct_clip_call(preprocessed_zips, synthetic_raw, clip_model):
    npz = read_npz(preprocessed_zips["train"])
    transform = preprocess.make_transform("center-crop", 256, 256, "lanczos")
    long_checked = 0
    with zipfile.ZipFile(preprocessed_zips["train"]) as out, \
            zipfile.ZipFile(synthetic_raw["paths"]["source"]) as raw:
        for index, image_id in enumerate(npz["ids"]):
            stored = decode_png(out.read(npz["names"][index]))
            with PIL.Image.open(io.BytesIO(raw.read(f"image/{image_id}.jpg"))) as jpeg:
                np.testing.assert_array_equal(stored, transform(jpeg))
            crop = preprocess.clip_image_input(stored, preprocess.crop_generator(0, image_id))
            expected = clip_model.encode_image(crop[None])[0]
            torch.testing.assert_close(torch.from_numpy(npz["img_emb"][index]), expected, atol=1e-5, rtol=1e-4)

            captions = raw.read(f"celeba-caption/{image_id}.txt").decode().splitlines()[:4]
            got = npz["txt_emb"][npz["txt_offsets"][index]:npz["txt_offsets"][index + 1]]
            for caption, embedding in zip(captions, got):
                try:
                    expected = clip_model.encode_text(clip_utils.tokenize([caption]))[0]
                except ValueError:
                    parts = preprocess.split_long_caption(caption)
                    expected = clip_model.encode_text(clip_utils.tokenize(parts)).mean(0)
                    long_checked += 1
                torch.testing.assert_close(torch.from_numpy(embedding), expected, atol=1e-5, rtol=1e-4)
    assert long_checked > 0


def test_crop_is_seeded_and_different_per_image():
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    a = preprocess.clip_image_input(image, preprocess.crop_generator(0, "7"))
    b = preprocess.clip_image_input(image, preprocess.crop_generator(0, "7"))
    assert a.shape == (3, 224, 224)
    assert torch.equal(a, b)
    crops = {preprocess.clip_image_input(image, preprocess.crop_generator(s, "7")).sum().item() for s in range(8)}
    assert len(crops) > 1
    small = preprocess.clip_image_input(image[:128, :128], preprocess.crop_generator(0, "7"))
    white = (1 - torch.tensor(clip_utils.CLIP_MEAN)) / torch.tensor(clip_utils.CLIP_STD)
    assert torch.allclose(small[:, 0, 0], white) or torch.allclose(small[:, -1, -1], white)


def test_batch_size_and_threads_do_not_change_results(synthetic_raw, tiny_clip_path, tmp_path):
    source = synthetic_raw["paths"]["source"]
    assert run_main(flags(source, tmp_path / "a.zip", tiny_clip_path, "--max-images", "5", "--batch_size", "1",
                          "--num_workers", "1")) is None
    assert run_main(flags(source, tmp_path / "b.zip", tiny_clip_path, "--max-images", "5", "--batch_size", "4",
                          "--num_captions", "10")) is None
    a, b = read_npz(tmp_path / "a.zip"), read_npz(tmp_path / "b.zip")
    assert list(a["ids"]) == list(b["ids"]) == synthetic_raw["splits"]["train"][:5]
    np.testing.assert_allclose(a["img_emb"], b["img_emb"], atol=1e-5)
    np.testing.assert_allclose(a["txt_emb"], b["txt_emb"].reshape(5, 10, -1)[:, :4].reshape(20, -1), atol=1e-5)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".partial")]


def test_folder_source_with_layout_variants(synthetic_raw, tiny_clip_path, tmp_path):
    raw = tmp_path / "raw"
    with zipfile.ZipFile(synthetic_raw["paths"]["source"]) as archive:
        for name in archive.namelist():
            folder, file = name.split("/")
            target = raw / "nested" / {"image": "images", "celeba-caption": "celea-caption"}[folder] / file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
    dest = tmp_path / "out.zip"
    split_dir = os.path.dirname(synthetic_raw["paths"]["train"])
    assert run_main(flags(raw, dest, tiny_clip_path, "--split_dir", split_dir, "--max-images", "3"), "test") is None
    assert list(read_npz(dest)["ids"]) == synthetic_raw["splits"]["test"][:3]


def test_summary_line(synthetic_raw, tiny_clip_path, tmp_path, capsys):
    assert run_main(flags(synthetic_raw["paths"]["source"], tmp_path / "s.zip", tiny_clip_path,
                          "--num_captions", "10")) is None
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("done: wrote 22 images with 220 captions")
    long_count = int(line.split("captions over 77 tokens")[0].split(";")[-1])
    assert long_count > 0
    assert "skipped 0 ids" in line and "failed 0 unreadable" in line


# ------------------------------------------------------------------------------------------------ bad input

def test_source_missing_or_not_a_zip(tiny_clip_path, tmp_path):
    error = run_main(flags(tmp_path / "nope.zip", tmp_path / "o.zip", tiny_clip_path))
    assert error.startswith("error: --source") and "no such file" in error
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "not a zip file or a folder" in run_main(flags(text, tmp_path / "o.zip", tiny_clip_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images found" in run_main(flags(empty, tmp_path / "o.zip", tiny_clip_path))


def test_split_pickle_missing(synthetic_raw, tiny_clip_path, tmp_path):
    error = run_main(flags(synthetic_raw["paths"]["source"], tmp_path / "o.zip", tiny_clip_path,
                           "--split_dir", str(tmp_path)))
    assert "celeba_filenames_train.pickle not found" in error and "--split_dir" in error


def test_ids_without_files_are_reported_and_skipped(synthetic_raw, tiny_clip_path, tmp_path, capsys):
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    with open(split_dir / "celeba_filenames_test.pickle", "wb") as f:
        pickle.dump(["3", "99998", "4", "99999"], f)
    argv = flags(synthetic_raw["paths"]["source"], tmp_path / "o.zip", tiny_clip_path, "--split_dir", str(split_dir))
    assert run_main(argv, "test") is None
    captured = capsys.readouterr()
    assert "2 of 4 test ids have no image or caption" in captured.err
    assert "skipped 2 ids" in captured.out
    assert list(read_npz(tmp_path / "o.zip")["ids"]) == ["3", "4"]
    with open(split_dir / "celeba_filenames_test.pickle", "wb") as f:
        pickle.dump(["99998", "99999"], f)
    argv = flags(synthetic_raw["paths"]["source"], tmp_path / "o2.zip", tiny_clip_path, "--split_dir", str(split_dir))
    assert "none of its 2 ids" in run_main(argv, "test")


def test_unreadable_image_is_skipped_and_counted(synthetic_raw, tiny_clip_path, tmp_path, capsys):
    raw = tmp_path / "raw.zip"
    with zipfile.ZipFile(synthetic_raw["paths"]["source"]) as src, zipfile.ZipFile(raw, "w") as dst:
        for name in src.namelist():
            broken = name == f"image/{synthetic_raw['splits']['test'][1]}.jpg"
            dst.writestr(name, b"not a jpeg" if broken else src.read(name))
    shutil.copy(synthetic_raw["paths"]["test"], tmp_path)
    assert run_main(flags(raw, tmp_path / "o.zip", tiny_clip_path), "test") is None
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "wrote 5 images" in line and "failed 1 unreadable" in line and "image/" in line
    ids = list(read_npz(tmp_path / "o.zip")["ids"])
    assert ids == [i for i in synthetic_raw["splits"]["test"] if i != synthetic_raw["splits"]["test"][1]]


def test_destination_exists_needs_overwrite(synthetic_raw, tiny_clip_path, tmp_path):
    dest = tmp_path / "o.zip"
    dest.write_bytes(b"old")
    argv = flags(synthetic_raw["paths"]["source"], dest, tiny_clip_path, "--max-images", "2")
    error = run_main(argv)
    assert "--dest" in error and "--overwrite" in error and dest.read_bytes() == b"old"
    assert run_main(argv + ["--overwrite"]) is None
    assert len(read_npz(dest)["ids"]) == 2


def test_embedding_size_mismatch(synthetic_raw, tiny_clip_path, tmp_path):
    error = run_main(flags(synthetic_raw["paths"]["source"], tmp_path / "o.zip", tiny_clip_path, "--emb_dim", "768"))
    assert "--emb_dim 768" in error and "512" in error
    assert "--clip_model" in run_main(flags(synthetic_raw["paths"]["source"], tmp_path / "o.zip",
                                            str(tmp_path / "missing.pt")))


def test_interrupted_run_leaves_no_zip(synthetic_raw, tiny_clip_path, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(preprocess, "encode_batch", fail)
    with pytest.raises(click.exceptions.Abort):  # click's form of Ctrl-C ("Aborted!", status 1)
        run_command(flags(synthetic_raw["paths"]["source"], tmp_path / "o.zip", tiny_clip_path), "train")
    assert os.listdir(tmp_path) == []
