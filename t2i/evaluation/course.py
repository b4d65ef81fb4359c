"""The graders' FID and IS: the course's published evaluation notebook, reproduced fact by fact.

This measurement, not the field's standard one (`t2i/evaluation/metrics.py`), ranks the teams and decides Problem 6
(CONTRACT.md, "The graders' FID and IS"). What it does, as the notebook does it:
* `ignite.utils.manual_seed(999)`, then pytorch-ignite's `FID(device=...)` and `InceptionScore(device=...,
  output_transform=lambda x: x[0])` with their default feature extractor, attached to an `Engine` whose step
  returns `(fake, real)`. That extractor is torchvision's ImageNet Inception v3 *with its softmax*: both figures
  are computed on 1000 class probabilities, not on the 2048 pool features of the standard FID, so this FID is
  bounded by 4 (docs/evaluation.md).
* Real images: the course's own `ZipDataset(test zip, 3)` (the plain `read_dataset.py` of t2i/course_harness)
  through `idist.auto_dataloader(batch_size=128, num_workers=2, shuffle=False, drop_last=True)`: 46 batches,
  5888 of the 6000 test images; each `batch[0][2]`, the course loader's 64 px copy resized to 256, still in
  [-1, 1].
* Fakes: 128 a batch, each made alone from the one fixed prompt (its text feature: `generation.encode_prompt`,
  computed as the graders do), noise `randn(1, noise_dim)`, `denormalize_image(fake_images[-1])` on the CPU.
* Every image: torchvision `ToPILImage()` (a float tensor times 255 cast to uint8, so the real images' negative
  values wrap around), PIL `resize((299, 299), BILINEAR)`, `ToTensor()`.

The graders' notebook drew other random numbers before measuring (its preview cells), so the noise here is not
theirs: the figures are the same measurement with other draws. `--inception_weights` gives a local copy of
torchvision's weights file (or `make_random_course_inception`'s stand-in, for tests); ignite's own default
extractor then loads it, found where torchvision looks for its download. `CourseEvaluator` scores a generator;
the random state of the caller is left as it was.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator

import ignite
import ignite.distributed as idist
import PIL.Image
import torch
import torch.nn as nn
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.metrics import FID, InceptionScore
from ignite.utils import manual_seed
from torch.utils.data import Dataset, Subset
from torchvision import transforms
from torchvision.models import inception_v3
from tqdm import tqdm

from t2i import harness, plots
from t2i.checkpoints import rng_states, set_rng_states
from t2i.errors import T2IError
from t2i.files import make_folder, read_torch_file, torch_file_problem

PUBLISHED_PROMPT = "The woman is young and has blond hair, and arched eyebrows."
PUBLISHED_FIGURES = {"course_fid": 0.242269, "course_is": 1.863348}  # the solution's epoch-3 model
GRADERS_SEED = 999
GRADERS_BATCH_SIZE = 128
GRADERS_WORKERS = 2
GRADERS_NUM_REAL = 5888  # 46 whole batches of 128 of the 6000 test images
REAL_STAGE = 2  # batch[0][2]: the third stage (256 px) of the course loader's images
DATASET_STAGES = 3
INCEPTION_SIZE = 299
INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"  # torchvision's ImageNet weights; 0cc3c7bd: its sha256 prefix
GRID_IMAGES = 8  # a row of fakes above a row of real images: the report's picture of what Inception sees


def inception_layout() -> nn.Module:
    """torchvision's Inception v3 as its ImageNet weights build it (aux head, 1000 classes), on the meta device:
    the keys and shapes a weights file must have, without allocating or drawing anything."""
    with torch.device("meta"):
        return inception_v3(weights=None, aux_logits=True, init_weights=False)


def make_random_course_inception(path: str, seed: int = 0) -> str:
    """Write a random-weight state dict for torchvision's Inception v3 to `path` (in half precision: 52 MB instead
    of 104; torchvision loads it into float32); return `path`.

    He-initialised convolutions keep the activations' scale through the network. The classifier is then set on 8
    seeded random colour fields of random brightness: its bias centres their pool features and its random weights
    are scaled so that their logits spread by 2 (std). So the softmax that both figures read varies from image to
    image, neither one class for every image (torchvision's own random init: every FID is 0, every IS 1) nor
    uniform."""
    state = rng_states()
    torch.manual_seed(seed)
    try:
        model = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False).eval()
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        fields = F.interpolate(torch.rand(8, 3, 4, 4), size=INCEPTION_SIZE, mode="bicubic", align_corners=False)
        references = fields.clamp(0, 1) * torch.rand(8, 1, 1, 1)
        pooled: list[torch.Tensor] = []
        hook = model.fc.register_forward_hook(lambda module, inputs, output: pooled.append(inputs[0]))
        with torch.no_grad():
            model(references)
            hook.remove()
            mean = pooled[0].mean(0)
            weight = torch.randn_like(model.fc.weight)
            weight *= 2.0 / ((pooled[0] - mean) @ weight.T).std()
            model.fc.weight.copy_(weight)
            model.fc.bias.copy_(-weight @ mean)
    finally:
        set_rng_states(state)
    torch.save({key: value.half() if value.is_floating_point() else value
                for key, value in model.state_dict().items()}, path)
    return path


def check_course_inception_weights(path: str) -> None:
    """Raise T2IError (one line) unless `path` is a state dict that torchvision's Inception v3 loads."""
    state = read_torch_file(path, "Inception weights", f"give torchvision's {INCEPTION_FILE}")
    if not isinstance(state, dict):
        raise T2IError(f"--inception_weights {path}: holds a {type(state).__name__}, not a state dict")
    expected = inception_layout().state_dict()
    missing = [key for key in expected if key not in state]
    if missing and all(key.startswith("AuxLogits.") for key in missing):
        raise T2IError(f"--inception_weights {path}: looks like torch-fidelity's Inception (the standard protocol's, "
                       f"no auxiliary head); --protocol course needs torchvision's {INCEPTION_FILE}")
    unexpected = [key for key in state if key not in expected]
    wrong = [key for key, value in expected.items() if key in state and (
        not isinstance(state[key], torch.Tensor) or state[key].shape != value.shape)]
    if missing or unexpected or wrong:
        raise T2IError(f"--inception_weights {path}: not torchvision's Inception v3 state dict ({len(missing)} keys "
                       f"missing, {len(unexpected)} unexpected, {len(wrong)} of the wrong shape); give "
                       f"{INCEPTION_FILE} from torchvision's model downloads")


def is_torchvision_file(path: str) -> bool:
    """Whether `path` holds torchvision's ImageNet weights themselves (its sha256 starts as its name says)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().startswith(INCEPTION_FILE.split("-")[1].split(".")[0])


@contextlib.contextmanager
def torchvision_finds(weights_path: str) -> Iterator[None]:
    """Within the block, torchvision takes `weights_path` for its cached download of the ImageNet Inception
    weights: a temporary $TORCH_HOME whose hub/checkpoints/ holds a link of the file's name to it."""
    previous = os.environ.get("TORCH_HOME")
    with tempfile.TemporaryDirectory(prefix="course_inception_") as home:
        folder = os.path.join(home, "hub", "checkpoints")
        os.makedirs(folder)
        os.symlink(os.path.abspath(weights_path), os.path.join(folder, INCEPTION_FILE))
        os.environ["TORCH_HOME"] = home
        try:
            if torch.hub.get_dir() != os.path.join(home, "hub"):  # a torch.hub.set_dir() call outranks TORCH_HOME
                raise T2IError(f"--inception_weights {weights_path}: torch.hub's folder was set in code "
                               f"({torch.hub.get_dir()}), so the file cannot be given to torchvision")
            yield
        finally:
            if previous is None:
                del os.environ["TORCH_HOME"]
            else:
                os.environ["TORCH_HOME"] = previous


def graders_metrics(weights_path: str | None, device: torch.device) -> tuple[FID, InceptionScore]:
    """The notebook's `FID(device=...)` and `InceptionScore(device=..., output_transform=lambda x: x[0])`, each with
    ignite's default extractor: torchvision's download, or `weights_path` in its place."""
    if weights_path is not None:
        check_course_inception_weights(weights_path)
    source = torchvision_finds(weights_path) if weights_path is not None else contextlib.nullcontext()
    try:
        with source:
            return FID(device=device), InceptionScore(device=device, output_transform=lambda output: output[0])
    except (OSError, RuntimeError) as err:  # torchvision's download or its torch.load of the cached copy
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_FILE)
        problem = torch_file_problem(cached) if weights_path is None and os.path.isfile(cached) else None
        if problem is not None:
            raise T2IError(f"{cached}: torch.hub's cached copy of torchvision's Inception weights is {problem} (an "
                           f"interrupted download); delete it and run again, or pass a copy with "
                           f"--inception_weights") from None
        if weights_path is None and isinstance(err, OSError):
            raise T2IError(f"could not download torchvision's Inception weights ({type(err).__name__}: {err}); "
                           f"connect to the internet, or pass a local {INCEPTION_FILE} with --inception_weights"
                           ) from None
        raise


def load_course_test_dataset(path: str) -> Dataset:
    """The test zip through the course's own `ZipDataset(path, 3)`: the images the graders compare with."""
    if not os.path.isfile(path):
        raise T2IError(f"{path}: no such test zip; preprocess the test split with preproc_datasets_celeba_zip_test.py "
                       f"and pass the zip it writes")
    # The course's loader lists the members whose extension is in PIL.Image.EXTENSION, a table that stays empty
    # until PIL's plugins are initialised: the notebook's imports had done it before it built the dataset.
    PIL.Image.init()
    return harness.load_course_module("read_dataset").ZipDataset(path, DATASET_STAGES)


def inception_input(images: torch.Tensor) -> torch.Tensor:
    """The notebook's `interpolate`: each float image ToPILImage (x 255, cast to uint8: values outside [0, 1] wrap
    around), resized to 299 x 299 bilinearly by PIL, ToTensor: [N, 3, 299, 299] in [0, 1]."""
    to_pil, to_tensor = transforms.ToPILImage(), transforms.ToTensor()
    return torch.stack([to_tensor(to_pil(image).resize((INCEPTION_SIZE, INCEPTION_SIZE), PIL.Image.BILINEAR))
                        for image in images])


@torch.no_grad()
def generate_alone(generator: nn.Module, text_feature: torch.Tensor, noise_dim: int, count: int,
                   device: torch.device) -> torch.Tensor:
    """`count` images of the one prompt, each generated alone with noise randn(1, noise_dim) drawn on the CPU:
    [count, 3, S, S] in [0, 1] on the CPU (the notebook's generate_images_batch)."""
    denormalize_image = harness.load_course_module("train_utils").denormalize_image  # the graders' own
    images = []
    for _ in range(count):
        noise = torch.randn(text_feature.shape[0], noise_dim).to(device)
        fake_images, _, _ = generator(text_feature, noise)
        images.append(denormalize_image(fake_images[-1].detach().cpu()).squeeze(0))
    return torch.stack(images)


class CourseEvaluator:
    """Scores generators with the graders' protocol on one test zip and prompt.

    The test images, the prompt's text feature and the two metrics (their Inception networks) are made at
    construction; each call generates the fakes and measures. `num_samples` keeps the first test images only
    (whole loader batches), for a quicker, biased estimate; `batch_size` other than 128 is for small test zips;
    `seed` other than 999 shows how much the figures move with the random draw."""

    def __init__(self, test_data: str, text_feature: torch.Tensor, *, prompt: str, device: torch.device | str,
                 inception_weights: str | None = None, batch_size: int = GRADERS_BATCH_SIZE,
                 num_samples: int | None = None, seed: int = GRADERS_SEED, progress: bool = True,
                 samples_flag: str = "--num_samples"):
        if batch_size < 1:
            raise T2IError(f"--batch_size {batch_size}: must be at least 1")
        self.device = torch.device(device)
        state = rng_states()  # building the networks draws random numbers: the caller's stream is left as it was
        try:
            dataset = load_course_test_dataset(test_data)
            total = len(dataset)
            if num_samples is not None and num_samples < total:
                dataset = Subset(dataset, range(num_samples))
            if len(dataset) < batch_size:
                kept = f"{samples_flag} {num_samples} keeps {len(dataset)}" if len(dataset) < total else \
                    f"holds {total}"
                raise T2IError(f"{test_data}: {kept} test images, which fill no batch of {batch_size}; the graders' "
                               f"loader drops an incomplete batch, so score at least {batch_size} images")
            self.fid, self.inception_score = graders_metrics(inception_weights, self.device)
        finally:
            set_rng_states(state)
        self.dataset = dataset
        self.test_data = test_data
        self.text_feature = text_feature.to(self.device)
        self.prompt = prompt
        self.inception_weights = inception_weights
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress
        self.num_real = len(dataset) // batch_size * batch_size

    def caveats(self) -> list[str]:
        """Where these figures are not the graders' measurement, in words."""
        notes = []
        if self.num_real != GRADERS_NUM_REAL:
            notes.append(f"measured on {self.num_real} test images, the graders on {GRADERS_NUM_REAL}: FID on fewer "
                         f"images is biased upwards, so compare only figures measured on the same number")
        if self.inception_weights is not None and not is_torchvision_file(self.inception_weights):
            notes.append(f"Inception weights from {self.inception_weights}, not torchvision's ImageNet ones: the "
                         f"figures test the code path and are not the graders'")
        if self.prompt != PUBLISHED_PROMPT:
            notes.append(f"prompt {self.prompt!r}, the graders' published run: {PUBLISHED_PROMPT!r}")
        if self.seed != GRADERS_SEED:
            notes.append(f"seed {self.seed}, the graders' {GRADERS_SEED}")
        return notes

    def __call__(self, generator: nn.Module, grid_path: str | None = None) -> dict:
        """Generate and measure; with `grid_path`, save the first batch's Inception inputs there (fakes above,
        real images below: what the graders' Inception sees)."""
        started = time.time()
        noise_dim = generator.noise_dim
        first_batch: list[torch.Tensor] = []

        def step(engine: Engine, batch: list) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                fake = inception_input(generate_alone(generator, self.text_feature, noise_dim, self.batch_size,
                                                      self.device))
                real = inception_input(batch[0][REAL_STAGE])
                if not first_batch:
                    first_batch.extend((fake[:GRID_IMAGES], real[:GRID_IMAGES]))
                return fake, real

        engine = Engine(step)
        self.fid.attach(engine, "fid")
        self.inception_score.attach(engine, "is")
        was_training = generator.training
        generator.eval()
        state = rng_states()
        try:
            manual_seed(self.seed)
            loader = idist.auto_dataloader(self.dataset, batch_size=self.batch_size, num_workers=GRADERS_WORKERS,
                                           shuffle=False, drop_last=True)
            with tqdm(total=len(loader), desc="graders' FID/IS", unit="batch", disable=not self.progress,
                      leave=False) as bar:
                engine.add_event_handler(Events.ITERATION_COMPLETED, lambda _: bar.update(1))
                engine.run(loader, max_epochs=1)
        finally:
            set_rng_states(state)
            generator.train(was_training)
        if grid_path is not None:
            make_folder(os.path.dirname(os.path.abspath(grid_path)))
            plots.save_image_grid(torch.cat(first_batch) * 2 - 1, grid_path, ncol=len(first_batch[0]))
        return {"protocol": "course", "course_fid": engine.state.metrics["fid"],
                "course_is": engine.state.metrics["is"], "num_real": self.num_real, "num_generated": self.num_real,
                "prompt": self.prompt, "seed": self.seed, "loader_batch_size": self.batch_size,
                "inception_weights": self.inception_weights, "ignite": ignite.__version__,
                "generated_size": 64 * 2 ** (generator.num_stage - 1), "test_data": self.test_data,
                "seconds": round(time.time() - started, 1), "caveats": self.caveats()}


def graders_lines(figures: dict) -> str:
    """Both figures printed as the notebook prints them."""
    return f"*   FID : {figures['course_fid']:4f}\n*    IS : {figures['course_is']:4f}"


def summary_line(figures: dict) -> str:
    return (f"graders' FID {figures['course_fid']:.6f}, IS {figures['course_is']:.6f} ({figures['num_generated']} "
            f"fakes of one prompt vs {figures['num_real']} test images; pytorch-ignite on Inception's 1000 class "
            f"probabilities: not comparable with the standard FID)")
