"""The machinery behind the course's files and the command-line scripts.

The top level of the repository holds what the course fixes (`main.py`, `train.py`, `network.py`,
`read_dataset.py`, `dataloader.py`, `train_utils.py`, `fix_seed.py`, the two preprocessing commands and
`generate_image.py`) and our own scripts (`evaluate.py`, `check_submission.py`, `demo.py`, `synthetic_data.py`).
They import from this package; nothing in this package imports them, so the graders' plain copies of the
course's files can replace ours without breaking anything here.
"""
