"""README.md and docs/: the Quick start commands, the generated flag tables, the project layout, the links."""
import glob
import importlib.util
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme() -> str:
    return read("README.md")


def read(path: str) -> str:
    with open(os.path.join(ROOT, path)) as f:
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
    assert cli_tables.generated_block(read("docs/cli.md")) == cli_tables.tables(), \
        "docs/cli.md's flag tables are out of date: run `python .ci/cli_tables.py --write`"


def test_the_readme_is_read_in_one_sitting_and_its_links_lead_somewhere():
    text = readme()
    assert len(text.splitlines()) <= 400
    links = re.findall(r"\]\(((?:docs/|\.ci/|tests/|benchmarks/)[^)#\s]*)", text)
    assert {"docs/cli.md", "docs/measurements.md", "docs/troubleshooting.md"} <= set(links)
    missing = [link for link in links if not os.path.exists(os.path.join(ROOT, link))]
    assert not missing, f"README.md links to missing files: {missing}"


def test_project_layout_names_every_file():
    layout = section(readme(), "Project layout")
    files = [os.path.basename(path) for pattern in ("*.py", "*.ipynb")
             for path in glob.glob(os.path.join(ROOT, pattern))]
    missing = [name for name in files if f"`{name}`" not in layout]
    assert not missing, f"README.md's Project layout lacks {missing}"
