"""--recipe: the measured recipe as one switch, filling only the options the command line does not give."""
from argparse import Namespace

import pytest

from t2i.training import options


def completed(*argv: str) -> Namespace:
    return options.complete(options.parse(list(argv), "test"))


GUIDELINE = {"recipe": "guideline", "lam": 10.0, "beta": 1.0, "gamma": 5.0, "tau": 0.5, "detach_condition": False,
             "ema": False, "mismatch": False, "ca_init_std": None, "diffaugment": "", "language_free": False,
             "clip_loss_any_size": False, "g_lr": None, "d_lr": None}


def test_the_guideline_is_the_default_with_every_improvement_off():
    args = completed()
    assert {name: getattr(args, name) for name in GUIDELINE} == GUIDELINE


def test_fast_sets_its_options_and_nothing_else():
    fast, guideline = completed("--recipe", "fast"), completed()
    expected = {"lam": 0.0, "beta": 0.1, "detach_condition": True, "mismatch": True, "ema": True, "ca_init_std": 3.0}
    assert {name: getattr(fast, name) for name in expected} == expected
    changed = {name for name in options.BY_NAME if getattr(fast, name) != getattr(guideline, name)}
    assert changed == {"recipe", *expected}


@pytest.mark.parametrize("given, name, value", [
    (["--lam", "10"], "lam", 10.0),  # equal to the default, and still given: it wins
    (["--beta", "1.0"], "beta", 1.0),
    (["--no-detach_condition"], "detach_condition", False),
    (["--lam=2.5"], "lam", 2.5),
])
def test_an_option_given_explicitly_beats_the_recipe(given, name, value):
    for argv in (["--recipe", "fast", *given], [*given, "--recipe", "fast"]):
        args = completed(*argv)
        assert getattr(args, name) == value
        others = {"lam": 0.0, "beta": 0.1, "detach_condition": True}
        others.pop(name)
        assert all(getattr(args, other) == fast_value for other, fast_value in others.items())


def test_completing_twice_changes_nothing():
    args = completed("--recipe", "fast", "--beta", "0.5")
    assert vars(options.complete(args)) == vars(args)


def test_the_course_main_namespace_gets_the_guideline_and_a_recipe_attribute_applies():
    # The course's main.py gives only its own flags: every option it lacks is at its default or the recipe's.
    course = options.complete(Namespace(batch_size=24, num_stage=3))
    assert {name: getattr(course, name) for name in GUIDELINE} == GUIDELINE
    fast = options.complete(Namespace(batch_size=24, num_stage=3, recipe="fast", beta=0.3))
    assert (fast.lam, fast.beta, fast.detach_condition) == (0.0, 0.3, True)


def test_the_saved_options_record_the_recipe_and_its_values():
    saved = options.saved_form(completed("--recipe", "fast"))
    assert (saved["recipe"], saved["lam"], saved["beta"], saved["detach_condition"]) == ("fast", 0.0, 0.1, True)


def test_the_course_mains_path_objects_become_plain_strings():
    # The graders' main.py declares --train_data, --checkpoint_path and --result_path with type=pathlib.Path.
    import json
    from pathlib import Path

    course = options.complete(Namespace(train_data=Path("sample_train.zip"), checkpoint_path=Path("model_exp1"),
                                        result_path=Path("images_exp1"), resume_checkpoint_path=None))
    assert (course.train_data, course.checkpoint_path, course.result_path) == ("sample_train.zip", "model_exp1",
                                                                               "images_exp1")
    assert json.loads(json.dumps(options.saved_form(course)))["checkpoint_path"] == "model_exp1"
    assert options.compare_with_saved(options.saved_form(course), course) == []
    ours = completed()  # our main.py declares the same types, with the same defaults
    assert options.BY_NAME["train_data"].type is Path and ours.train_data == "sample_train.zip"
