"""The machinery behind the course's files and the command-line scripts, grouped by job.

    errors, files, devices   one-line errors, atomic writes and safe reads, the device choice
    clip_utils               loading OpenAI CLIP (offline too), and which CLIP made an artefact
    checkpoints              checkpoint folders: the contract's files, rebuilding models as the graders do
    generation, plots        prompt -> images; the PNGs people look at (grids, curves)
    data/                    raw dataset -> preprocessed zip, the zip as a Dataset, training batches
    training/                options, the per-iteration settings, resume state, the log, EMA, torchrun
    evaluation/              FID, KID, IS and CLIP score on the test split
    synthetic/               the synthetic world of the tests, the demo and the benchmarks
    harness, course_harness/ the graders' six plain files (our stand-in), to run our files as they do

The top level of the repository holds what the course fixes (`main.py`, `train.py`, `network.py`,
`read_dataset.py`, `dataloader.py`, `train_utils.py`, `fix_seed.py`, the two preprocessing commands and
`generate_image.py`) and our own scripts. They import from this package; nothing in this package imports them
(the models' modules reach it as parameters, `models.NETWORKS`), so the graders' plain copies of the course's
files can replace ours without breaking anything here.
"""
