"""PNG output that people look at: image grids (with captions under the images) and loss curves.

Every PNG is written atomically (`files.atomic_write`): a kill or a full disk never leaves half an image under
the final name, and a failed write is one line naming the file."""
from __future__ import annotations

import csv
import re
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only: no display on Colab workers, CI or servers
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from t2i.files import atomic_write  # noqa: E402



def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> [0, 255] uint8 with the rounding of `torchvision.utils.save_image`, so scoring
    these tensors equals scoring the PNGs a user would save."""
    return images.detach().float().mul(0.5).add(0.5).mul_(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def save_image_grid(images: torch.Tensor, path: str, ncol: int, captions: list[str] | None = None,
                    caption_width: int = 40) -> None:
    """Save [N, 3, H, W] images in [-1, 1] as a grid PNG, `ncol` per row; with `captions` (one per image)
    each image gets its caption wrapped beneath it."""
    images = to_uint8(images).cpu()
    if not captions:
        grid = make_grid(images, nrow=ncol, padding=2, pad_value=255)
        picture = Image.fromarray(grid.permute(1, 2, 0).numpy())
        atomic_write(path, lambda f: picture.save(f, format="PNG"))
        return
    size = images.shape[-1]
    font = ImageFont.load_default()
    lines = [textwrap.wrap(caption, caption_width)[:6] for caption in captions]
    line_height = 12
    text_height = line_height * max(len(wrapped) for wrapped in lines) + 4
    nrow = (len(images) + ncol - 1) // ncol
    canvas = Image.new("RGB", (ncol * (size + 4), nrow * (size + text_height + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (image, wrapped) in enumerate(zip(images, lines)):
        x = (index % ncol) * (size + 4) + 2
        y = (index // ncol) * (size + text_height + 4) + 2
        canvas.paste(Image.fromarray(image.permute(1, 2, 0).numpy()), (x, y))
        for line_number, line in enumerate(wrapped):
            draw.text((x, y + size + 2 + line_number * line_height), line, fill="black", font=font)
    atomic_write(path, lambda f: canvas.save(f, format="PNG"))


def plot_loss_curve(csv_path: str, png_path: str) -> None:
    """Draw loss_log.csv: D and G losses at each report interval, their epoch means, and every loss component
    (columns D/... of the discriminator step, G/... of the generator step, summed over the stages)."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = list(reader)
    if not rows:
        return
    steps = [row for row in rows if row["step"] != "end"]
    ends = [row for row in rows if row["step"] == "end"]
    components: dict[str, list[str]] = {}  # "D/name" or "G/name" without the stage suffix -> its columns
    for field in fields:
        if field.startswith(("D/", "G/")):
            components.setdefault(re.sub(r"_\d+$", "", field), []).append(field)

    def value(row: dict, name: str) -> float:
        return float(row[name]) if row.get(name) not in (None, "") else float("nan")

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, color in (("d_loss", "tab:blue"), ("g_loss", "tab:orange")):
        axes[0].plot(range(len(steps)), [value(row, name) for row in steps], color=color, label=name, lw=0.8)
        axes[1].plot([int(row["epoch"]) for row in ends], [value(row, name) for row in ends], "o-", color=color,
                     label=name)
    for name, columns in components.items():
        style = "-" if name.startswith("D/") else "--"
        axes[2].plot(range(len(steps)), [sum(value(row, column) for column in columns) for row in steps], style,
                     label=name, lw=0.8)
    axes[0].set(title="losses at each report interval", xlabel="logged point", ylabel="loss")
    axes[1].set(title="epoch means", xlabel="epoch", ylabel="loss")
    axes[2].set(title="components (D solid, G dashed; summed over stages)", xlabel="logged point", ylabel="loss")
    for axis in axes:
        if axis.lines:
            axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(png_path, lambda f: fig.savefig(f, dpi=100, format="png"))
    finally:
        plt.close(fig)
