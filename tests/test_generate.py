"""generate_image.py: the course's outputs from a checkpoint folder, and its errors."""
import argparse

import pytest
import torch
from PIL import Image

import generate_image
from t2i import clip_utils
from t2i.generation import encode_prompt
from network import Discriminator, Generator, weight_init
from train_utils import save_hyp, save_model


def make_checkpoint(folder, num_stage, clip_dim=512):
    args = argparse.Namespace(clip_embedding_dim=clip_dim, projection_dim=8, noise_dim=8, num_stage=num_stage,
                              use_uncond_loss=True, use_contrastive_loss=True, batch_size=4, num_epochs=3,
                              learning_rate=2e-4, checkpoint_path=str(folder))
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    G = Generator(clip_dim, 8, 8, 64, 3, num_stage, "cpu")
    G.apply(weight_init)
    save_hyp(args, 64, 3, 4, 1)
    save_model(args, G, [Discriminator(8, 3, 4, 1, clip_dim, s, "cpu") for s in range(num_stage)], 2, num_stage)
    return str(folder)


def test_writes_the_three_course_images(tmp_path, tiny_clip_path, monkeypatch, capsys):
    checkpoint_path = make_checkpoint(tmp_path / "ck", 3)
    monkeypatch.chdir(tmp_path)
    generate_image.main(["--prompt", "The woman is young and has blond hair, and arched eyebrows.", "--load_epoch", "2",
                         "--checkpoint_path", checkpoint_path, "--clip_model", tiny_clip_path, "--show_hyp", "--device",
                         "cpu"])
    for size in (64, 128, 256):
        with Image.open(tmp_path / f"result_{size}.png") as image:
            assert image.size == (size, size) and image.mode == "RGB"
    output = capsys.readouterr().out
    assert "num_stage: 3" in output and "result_256.png" in output


def test_seed_makes_generation_repeatable_and_num_images_makes_a_grid(tmp_path, tiny_clip_path):
    checkpoint_path = make_checkpoint(tmp_path / "ck", 2)
    common = ["--prompt", "a man with black hair", "--load_epoch", "2", "--checkpoint_path", checkpoint_path,
              "--clip_model", tiny_clip_path, "--seed", "3", "--device", "cpu"]
    generate_image.main(common + ["--out_dir", str(tmp_path / "a")])
    generate_image.main(common + ["--out_dir", str(tmp_path / "b")])
    assert (tmp_path / "a" / "result_128.png").read_bytes() == (tmp_path / "b" / "result_128.png").read_bytes()
    assert not (tmp_path / "a" / "result_256.png").exists()  # two stages: only the stages that exist
    generate_image.main(common + ["--out_dir", str(tmp_path / "grid"), "--num_images", "4"])
    with Image.open(tmp_path / "grid" / "result_64.png") as image:
        assert image.size[0] > 2 * 64  # a 2 x 2 grid
    assert (tmp_path / "grid" / "result_grid.png").exists()


def test_the_text_feature_is_the_normalized_clip_text_embedding(tiny_clip_path):
    clip_model = clip_utils.load_clip(tiny_clip_path)
    feature = encode_prompt(clip_model, "a smiling woman", torch.device("cpu"))
    direct = clip_model.encode_text(clip_utils.tokenize(["a smiling woman"])).float()
    torch.testing.assert_close(feature, direct / direct.norm(dim=-1, keepdim=True))
    assert feature.dtype == torch.float32 and feature.shape == (1, 512)


@pytest.mark.parametrize("change, message", [
    (["--prompt", "word " * 90], "longer than CLIP's 77 tokens"),
    (["--load_epoch", "9"], r"epoch_9_Gen.pt: no such file \(complete epochs in .*: \[2\]\)"),
    (["--checkpoint_path", "/nonexistent"], "--checkpoint_path /nonexistent: no such folder"),
])
def test_bad_input_gives_one_line(tmp_path, tiny_clip_path, change, message):
    argv = ["--prompt", "a face", "--load_epoch", "2", "--checkpoint_path", make_checkpoint(tmp_path / "ck", 1),
            "--clip_model", tiny_clip_path, "--out_dir", str(tmp_path), "--device", "cpu"]
    for flag, value in zip(change[::2], change[1::2]):
        argv[argv.index(flag) + 1] = value
    with pytest.raises(SystemExit, match=message):
        generate_image.main(argv)
    assert not (tmp_path / "result_64.png").exists()


def test_a_clip_of_another_size_is_refused(tmp_path, tiny_clip_path):
    checkpoint_path = make_checkpoint(tmp_path / "ck", 1, clip_dim=256)
    with pytest.raises(SystemExit, match="gives 512-d embeddings but the checkpoint in .* needs 256-d"):
        generate_image.main(["--prompt", "a face", "--load_epoch", "2", "--checkpoint_path", checkpoint_path,
                             "--clip_model", tiny_clip_path, "--out_dir", str(tmp_path), "--device", "cpu"])
