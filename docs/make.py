"""Build the submission's documents: docs/report.typ and docs/galip.typ -> docs/build/report.pdf and galip.pdf.

    python -m docs.make              # both; or name them: python -m docs.make report

Typst typesets them (the `typst` package, one self-contained wheel: no system libraries, the same on a fresh
machine, CI and Colab; its own fonts, so every machine gives the same pages) and pypdf counts the pages of the PDF
written. The architecture figures are drawn first from the real modules (`docs/architecture_figure.py`) into
docs/build/, where the sources read them. The PDFs and figures are build outputs (gitignored).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
from dataclasses import dataclass

from docs import architecture_figure
from t2i.errors import T2IError, one_line_errors
from t2i.files import atomic_write, make_folder

DOCS_DIR = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.path.join(DOCS_DIR, "build")
INSTALL = "pip install -r requirements-docs.txt"


@dataclass(frozen=True)
class Document:
    source: str                # in docs/
    figures: tuple[str, ...]   # architecture figures it shows (docs.architecture_figure.FIGURES)
    max_pages: int | None      # the guideline's limit, if any


# The report, and each own model's description under its --arch name.
DOCUMENTS = {
    "report": Document("report.typ", ("stackgan",), 3),        # (4): "a short report, at most 3 pages"
    "galip": Document("galip.typ", ("galip",), None),          # (8): "a short description (about 5 pages)"
}


def pdf_path(name: str) -> str:
    return os.path.join(BUILD_DIR, f"{name}.pdf")


def figure_path(arch: str) -> str:
    return os.path.join(BUILD_DIR, f"architecture_{arch}.png")


def page_count(pdf_path: str) -> int:
    """Pages of a PDF, read back by a PDF reader."""
    import pypdf

    return len(pypdf.PdfReader(pdf_path).pages)


def build(name: str) -> tuple[str, int]:
    """Draw the document's figures, typeset it into docs/build/<name>.pdf; return (path, pages)."""
    document = DOCUMENTS[name]
    missing = [module for module in ("typst", "pypdf") if importlib.util.find_spec(module) is None]
    if missing:  # checked before anything is built
        raise T2IError(f"building docs/{document.source} needs typst and pypdf ({', '.join(missing)} missing): "
                       f"{INSTALL}")
    import typst
    make_folder(BUILD_DIR)
    for arch in document.figures:
        architecture_figure.FIGURES[arch](figure_path(arch))
    try:
        pdf = typst.compile(os.path.join(DOCS_DIR, document.source), root=DOCS_DIR, ignore_system_fonts=True)
    except RuntimeError as err:  # typst.TypstError: its diagnostic names the line ("┌─ report.typ:12:4")
        where = re.search(r"┌─ (\S+)", getattr(err, "diagnostic", "") or "")
        raise T2IError(f"{where.group(1) if where else 'docs/' + document.source}: typst could not typeset it: "
                       f"{getattr(err, 'message', err)}") from None
    path = pdf_path(name)
    atomic_write(path, lambda f: f.write(pdf))
    return path, page_count(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the report and GALIP's description as PDFs.")
    parser.add_argument("names", nargs="*", help=f"which documents: {', '.join(DOCUMENTS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in DOCUMENTS]
    if unknown:
        parser.error(f"unknown document(s) {unknown}: choose from {', '.join(DOCUMENTS)}")
    too_long = 0
    with one_line_errors():
        for name in args.names or DOCUMENTS:
            path, pages = build(name)
            limit = DOCUMENTS[name].max_pages
            over = limit is not None and pages > limit
            too_long += over
            print(f"{name}: {os.path.relpath(path)} ({pages} pages"
                  + (f", at most {limit} allowed: TOO LONG" if over else "") + ")")
    return 1 if too_long else 0


if __name__ == "__main__":
    sys.exit(main())
