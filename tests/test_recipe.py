"""--recipe: the measured recipe as one switch, filling only the options the command line does not give."""
from argparse import Namespace

import pytest

from t2i import options


def completed(*argv: str) -> Namespace:
    return options.complete(options.parse(list(argv), "test"))


def test_the_guideline_is_the_default():
    args = completed()
    assert (args.recipe, args.lam, args.beta, args.detach_condition) == ("guideline", 10.0, 1.0, False)


def test_fast_sets_its_three_options_and_nothing_else():
    fast, guideline = completed("--recipe", "fast"), completed()
    assert (fast.lam, fast.beta, fast.detach_condition) == (0.0, 0.1, True)
    changed = {name for name in options.BY_NAME if getattr(fast, name) != getattr(guideline, name)}
    assert changed == {"recipe", "lam", "beta", "detach_condition"}


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
    assert (course.recipe, course.lam, course.beta, course.detach_condition) == ("guideline", 10.0, 1.0, False)
    fast = options.complete(Namespace(batch_size=24, num_stage=3, recipe="fast", beta=0.3))
    assert (fast.lam, fast.beta, fast.detach_condition) == (0.0, 0.3, True)


def test_the_saved_options_record_the_recipe_and_its_values():
    saved = options.saved_form(completed("--recipe", "fast"))
    assert (saved["recipe"], saved["lam"], saved["beta"], saved["detach_condition"]) == ("fast", 0.0, 0.1, True)
