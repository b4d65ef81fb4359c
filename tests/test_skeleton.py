"""The course skeleton's structure, as graders read it: every name, its leading parameters, the sub-modules
built through the skeleton's helper methods, the problem markers, and state-dict keys that older checkpoints
still load into."""
import inspect
import json
import os
import re

import pytest
import torch

import network
import preproc_datasets_celeba_zip_test
import preproc_datasets_celeba_zip_train
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> the skeleton's parameters, in order (ours may add keyword parameters with defaults after them).
NETWORK = {
    "ConditioningAugmention.__init__": ["self", "input_dim", "emb_dim", "device"],
    "ConditioningAugmention.forward": ["self", "x"],
    "ImageExtractor.__init__": ["self", "in_chans"],
    "ImageExtractor.forward": ["self", "x"],
    "Generator_type_1.__init__": ["self", "in_chans", "input_dim"],
    "Generator_type_1._image_net": ["self"],
    "Generator_type_1._mapping_network": ["self"],
    "Generator_type_1._upsample_network": ["self"],
    "Generator_type_1.forward": ["self", "condition", "noise"],
    "Generator_type_2.__init__": ["self", "in_chans", "condition_dim", "num_res_layer", "device"],
    "Generator_type_2._image_net": ["self"],
    "Generator_type_2._upsample_network": ["self"],
    "Generator_type_2._joint_conv": ["self"],
    "Generator_type_2._res_layer": ["self"],
    "Generator_type_2.forward": ["self", "condition", "prev_output"],
    "ResModule.__init__": ["self", "in_chans"],
    "ResModule.forward": ["self", "x"],
    "Generator.__init__": ["self", "text_embedding_dim", "projection_dim", "noise_input_dim", "in_chans", "out_chans",
                           "num_stage", "device"],
    "Generator._conditioning_augmentation": ["self"],
    "Generator._stage_generator": ["self", "i"],
    "Generator.forward": ["self", "text_embedding", "noise"],
    "UncondDiscriminator.__init__": ["self", "in_chans", "out_chans"],
    "UncondDiscriminator.forward": ["self", "x"],
    "CondDiscriminator.__init__": ["self", "in_chans", "condition_dim", "out_chans"],
    "CondDiscriminator.forward": ["self", "x", "c"],
    "AlignCondDiscriminator.__init__": ["self", "in_chans", "condition_dim", "text_embedding_dim"],
    "AlignCondDiscriminator.forward": ["self", "x", "c"],
    "Discriminator.__init__": ["self", "projection_dim", "img_chans", "in_chans", "out_chans", "text_embedding_dim",
                               "curr_stage", "device"],
    "Discriminator._global_discriminator": ["self"],
    "Discriminator._prior_layer": ["self"],
    "Discriminator._uncond_discriminator": ["self"],
    "Discriminator._cond_discriminator": ["self"],
    "Discriminator._align_cond_discriminator": ["self"],
    "Discriminator.forward": ["self", "img", "condition"],
    "weight_init": ["layer"],
}
TRAIN = {
    "contrastive_loss_G": ["fake_image", "clip_model", "txt_embedding", "device", "tau"],
    "contrastive_loss_D": ["g_out_align", "txt_embedding", "tau"],
    "D_loss": ["real_image", "fake_image", "model_D", "loss_fn", "use_uncond_loss", "use_contrastive_loss", "gamma",
               "mu", "txt_feature", "d_fake_label", "d_real_label"],
    "G_loss": ["fake_image", "model_D", "loss_fn", "use_uncond_loss", "use_contrastive_loss", "clip_model", "gamma",
               "lam", "device", "mu", "txt_feature", "g_label"],
    "train_step": ["train_loader", "noise_dim", "device", "model_G", "model_D_lst", "optim_g", "optim_d_lst",
                   "loss_fn", "num_stage", "use_uncond_loss", "use_contrastive_loss", "report_interval",
                   "clip_model", "gamma", "lam"],
    "train": ["args"],
}
PREPROCESSING = ["ctx", "source", "dest", "max_images", "transform", "resize_filter", "width", "height", "emb_dim"]
PREPROCESSING_HELPERS = ["open_dataset", "open_dest", "make_transform", "custom_reshape", "clip_preprocess", "error"]


def resolve(module, dotted: str):
    target = module
    for part in dotted.split("."):
        target = getattr(target, part)
    return target


def check_leading_parameters(function, expected: list[str], name: str) -> None:
    parameters = list(inspect.signature(function).parameters.values())
    assert [p.name for p in parameters[:len(expected)]] == expected, name
    for extra in parameters[len(expected):]:  # ours: keyword arguments with defaults only
        assert extra.default is not inspect.Parameter.empty or extra.kind is inspect.Parameter.VAR_KEYWORD, \
            f"{name}: extra parameter {extra.name} has no default"


@pytest.mark.parametrize("name", sorted(NETWORK))
def test_every_network_name_has_the_skeletons_parameters(name):
    check_leading_parameters(resolve(network, name), NETWORK[name], name)


@pytest.mark.parametrize("name", sorted(TRAIN))
def test_every_train_name_has_the_skeletons_parameters(name):
    check_leading_parameters(getattr(train, name), TRAIN[name], name)


@pytest.mark.parametrize("module", [preproc_datasets_celeba_zip_train, preproc_datasets_celeba_zip_test])
def test_preprocessing_commands_have_convert_dataset_beside_the_helpers(module):
    import click

    assert isinstance(module.convert_dataset, click.Command)
    check_leading_parameters(module.convert_dataset.callback.__wrapped__, PREPROCESSING, module.__name__)
    assert all(callable(getattr(module, helper)) for helper in PREPROCESSING_HELPERS)


BUILDERS = {  # attribute -> the helper method the skeleton's __init__ builds it with
    network.Generator_type_1: {"mapping": "_mapping_network", "upsample_layer": "_upsample_network",
                               "image_net": "_image_net"},
    network.Generator_type_2: {"joining_layer": "_joint_conv", "upsample_layer": "_upsample_network",
                               "image_net": "_image_net"},
    network.Generator: {"condition_aug": "_conditioning_augmentation"},
    network.Discriminator: {"global_layer": "_global_discriminator", "prior_layer": "_prior_layer",
                            "uncond_discriminator": "_uncond_discriminator",
                            "cond_discriminator": "_cond_discriminator",
                            "align_cond_discriminator": "_align_cond_discriminator"},
}


@pytest.mark.parametrize("cls", list(BUILDERS), ids=lambda cls: cls.__name__)
def test_init_builds_every_sub_module_through_its_helper_method(cls, monkeypatch):
    """Each helper is replaced by one returning a marker module: __init__ must store exactly that."""
    markers = {}
    for attribute, method in BUILDERS[cls].items():
        marker = torch.nn.Identity()
        markers[attribute] = marker
        monkeypatch.setattr(cls, method, lambda self, marker=marker: marker)
    arguments = {network.Generator_type_1: (64, 16), network.Generator_type_2: (32, 8, 2, "cpu"),
                 network.Generator: (512, 8, 8, 64, 3, 2, "cpu"),
                 network.Discriminator: (8, 3, 4, 1, 512, 1, "cpu")}[cls]
    model = cls(*arguments)
    for attribute, marker in markers.items():
        assert getattr(model, attribute) is marker, attribute


def test_stage_generators_and_res_layers_come_from_their_helpers(monkeypatch):
    calls = []
    original = network.Generator._stage_generator
    monkeypatch.setattr(network.Generator, "_stage_generator", lambda self, i: calls.append(i) or original(self, i))
    G = network.Generator(512, 8, 8, 64, 3, 3, "cpu")
    assert calls == [0, 1, 2]
    assert [type(stage).__name__ for stage in G.g_layer] == ["Generator_type_1", "Generator_type_2", "Generator_type_2"]
    assert [stage.in_chans for stage in G.g_layer[1:]] == [64 // 16, 64 // 32]
    assert G.num_res_layer_type2 == 2 and all(len(stage.res_layer) == 2 for stage in G.g_layer[1:])


def test_state_dict_keys_are_unchanged_so_older_checkpoints_load_strictly():
    with open(os.path.join(ROOT, "tests", "golden_state_keys.json")) as f:
        golden = json.load(f)
    G = network.Generator(512, 128, 100, 64, 3, 3, "cpu")
    assert {key: list(value.shape) for key, value in G.state_dict().items()} == golden["generator"]
    for stage in range(3):
        D = network.Discriminator(128, 3, 8, 1, 512, stage, "cpu")
        assert {key: list(value.shape) for key, value in D.state_dict().items()} == golden["discriminators"][stage]


@pytest.mark.parametrize("path, problems", [
    ("network.py", ["2-(a)", "2-(b)", "2-(c)", "2-(d)", "2-(e)", "3-(b)", "3-(c)", "3-(d)", "3-(a)"]),  # file order
    ("train.py", ["4-(c)", "4-(d)", "4-(b)", "4-(a)", "4-(f)", "4-(e)"]),
    ("preproc_datasets_celeba_zip_train.py", ["1-(a)"]),
    ("preproc_datasets_celeba_zip_test.py", ["1-(b)"]),
])
def test_each_filled_blank_carries_its_problem_marker_in_order(path, problems):
    with open(os.path.join(ROOT, path)) as f:
        text = f.read()
    found = re.findall(r"Problem (\d-\([a-f]\))", text)
    first_seen = [problem for index, problem in enumerate(found) if problem not in found[:index]]
    assert first_seen == problems


def test_train_py_reads_as_the_guideline_in_few_lines():
    with open(os.path.join(ROOT, "train.py")) as f:
        lines = f.read().splitlines()
    assert len(lines) < 400
    text = "\n".join(lines)
    for given in ("aug_loss = KL_divergence(", "g_loss += (beta) * aug_loss", "# Phase 1. Optimize Discriminator",
                  "# Phase 2. Optimize Generator", "# Phase 3. Report", "save_hyp(args, g_in_chans, g_out_chans,",
                  "train_dataset = ZipDataset(args.train_data, num_stage)",
                  "get_dataloader(args=args, dataset=train_dataset, is_train=True)", "G.apply(weight_init)",
                  "D.apply(weight_init)", "betas=(0.5, 0.999)", "save_model(args,", "f\"epoch_{epoch}.png\""):
        assert given in text, given
