"""README.md: the Quick start commands, the generated flag tables, and the project layout stay true."""
import glob
import importlib.util
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_quick_start_is_one_block_of_two_commands():
    quick_start = section(readme(), "Quick start")
    body = quick_start.split("\n", 2)[2].lstrip("\n")
    block = re.match(r"```(?:bash)?\n(.*?)```", body, re.S)
    assert block, "the Quick start section must begin with its code block"
    commands = [line for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["bash .ci/demo", "bash .ci/run"]
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        run = f.read()
    with open(os.path.join(ROOT, ".ci", "setup.sh")) as f:
        setup = f.read()
    assert "-m pytest -q tests" in run and "requirements-dev.txt" in run
    assert '"torch==2.14.1" "torchvision==0.29.1"' in setup and "-r requirements.txt" in setup


def test_flag_tables_match_the_parsers():
    spec = importlib.util.spec_from_file_location("cli_tables", os.path.join(ROOT, ".ci", "cli_tables.py"))
    cli_tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli_tables)
    assert cli_tables.readme_block(readme()) == cli_tables.tables(), \
        "README.md's flag tables are out of date: run `python .ci/cli_tables.py --write`"


def test_measured_figures_section_exists():
    assert "\n## Measured figures\n" in readme()


def test_project_layout_names_every_file():
    layout = section(readme(), "Project layout")
    files = [os.path.basename(path) for pattern in ("*.py", "*.ipynb")
             for path in glob.glob(os.path.join(ROOT, pattern))]
    missing = [name for name in files if f"`{name}`" not in layout]
    assert not missing, f"README.md's Project layout lacks {missing}"
