"""Architecture figures drawn from the real modules: every block of every stage, with the shapes it takes and gives.

The models are built from `network.py` / `network_galip.py` at the course's sizes and run once on a dummy batch on
PyTorch's meta device (shapes only: no arithmetic, no memory). Forward hooks record what each module receives and
returns, so the figure shows what the code computes, not what a drawing says it should. Each box is one
sub-module of a stage: its attribute path, its class and parameter count, its layers in order (identical
consecutive blocks counted: "4 x [ConvT 4x4/2 + BN + ReLU]") and the chain of shapes through it.

    python -m docs.architecture_figure --arch stackgan --out docs/build/architecture_stackgan.png
"""
from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

from t2i.files import atomic_write  # noqa: E402

# The course's sizes (CONTRACT.md): CLIP embedding D, projection P, noise z, Ng, Nd; and GALIP's defaults.
CLIP_DIM, PROJECTION_DIM, NOISE_DIM, STACKGAN_NG, STACKGAN_ND = 512, 128, 100, 1024, 64
GALIP_NG, GALIP_ND = 256, 768
NUM_STAGE = 3
BATCH = 2  # BatchNorm in training mode needs two samples; the figure drops the batch axis

LAYER_NAMES = {nn.Linear: "Linear", nn.BatchNorm1d: "BN", nn.BatchNorm2d: "BN", nn.LeakyReLU: "LReLU",
               nn.ReLU: "ReLU", nn.Tanh: "Tanh", nn.SiLU: "SiLU", nn.Identity: "identity"}
FONT_SIZE = 6.3          # points, at the size the report prints the figure (7 inches wide)
LINE_HEIGHT = 0.115      # inches per text line in a box
CHARS_PER_INCH = 17      # what fits across a box at FONT_SIZE (bold titles and digits are wide)


@dataclass
class Box:
    title: str          # attribute path, class and parameter count: "res_layer: 2 x ResModule (148k)"
    layers: str         # its layers in order: "4 x [ConvT 4x4/2 + BN + ReLU]"
    shapes: list[str]   # the shapes through it, first the input: ["1024x4x4", "512x8x8", ...]
    head: bool = False  # a discriminator head: drawn as a branch off the trunk


@dataclass
class Column:
    title: str
    boxes: list[Box]


def is_torch_module(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.nn")


def is_leaf(module: nn.Module) -> bool:
    return not list(module.children())


def layer_name(layer: nn.Module) -> str:
    """'Conv 4x4/2', 'ConvT 4x4/2', 'BN', ...: one layer as the figure names it."""
    if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
        kind = "ConvT" if isinstance(layer, nn.ConvTranspose2d) else "Conv"
        stride = f"/{layer.stride[0]}" if layer.stride[0] > 1 else ""
        return f"{kind} {layer.kernel_size[0]}x{layer.kernel_size[1]}{stride}"
    return LAYER_NAMES.get(type(layer), type(layer).__name__)


def counted(items: list[str]) -> str:
    """Consecutive equal items counted: [a, a, a, b] -> '3 x [a], b'."""
    runs: list[list] = []
    for item in items:
        if runs and runs[-1][0] == item:
            runs[-1][1] += 1
        else:
            runs.append([item, 1])
    return ", ".join(item if count == 1 else f"{count} x [{item}]" if " " in item else f"{count} x {item}"
                     for item, count in runs)


def describe(module: nn.Module) -> str:
    """A module's layers in order. Bare layers in a row are joined with '+'; a sub-module of the project's own
    classes is named by its class (with 'nearest x2' when it upsamples first); repeated blocks are counted."""
    if is_leaf(module):
        return layer_name(module)
    items: list[str] = []
    run: list[str] = []
    for child in module.children():
        if is_leaf(child):
            run.append(layer_name(child))
            continue
        if run:
            items.append(" + ".join(run))
            run = []
        if is_torch_module(child):
            items.append(describe(child))
        else:
            items.append(("nearest x2, " if getattr(child, "upsample", False) else "") + type(child).__name__)
    if run:
        items.append(" + ".join(run))
    return counted(items)


class Recorder:
    """Forward hooks on every sub-module of the traced models: the shapes each first call took and gave."""

    def __init__(self, models: list[nn.Module]):
        self.inputs: dict[int, list[tuple[int, ...]]] = {}
        self.outputs: dict[int, tuple[int, ...]] = {}
        self.handles = [module.register_forward_hook(self.record) for model in models for module in model.modules()]

    def record(self, module: nn.Module, args: tuple, output) -> None:
        # A module called twice (a head on real and on fake images) keeps its first call: the shapes are equal.
        first = output[0] if isinstance(output, (tuple, list)) else output
        if id(module) in self.outputs or not isinstance(first, torch.Tensor):  # whole models return lists
            return
        self.inputs[id(module)] = [tuple(a.shape[1:]) for a in args if isinstance(a, torch.Tensor)]
        self.outputs[id(module)] = tuple(first.shape[1:])

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()

    def chain(self, module: nn.Module, previous: str | None) -> list[str]:
        """The shapes through `module`: its input, then each block's output (for a container, every one of its
        blocks). A module whose first layer is applied functionally (GALIP's joint_conv) never runs as a whole:
        its input is then the previous box's output."""
        steps = list(module.children()) if is_torch_module(module) and not is_leaf(module) else [module]
        outputs = [shape(self.outputs[id(step)]) for step in steps if id(step) in self.outputs]
        if id(module) in self.inputs:
            start = " + ".join(shape(s) for s in self.inputs[id(module)])
        elif previous is not None and outputs:
            start = previous
        else:
            raise ValueError(f"{type(module).__name__} was never called on the dummy batch; nothing to draw")
        chain = [start]
        chain += [out for previous_out, out in zip([start] + outputs, outputs) if out != previous_out]
        return chain if len(chain) > 1 else chain * 2  # a block that keeps the shape still shows in -> out

    def boxes(self, named: list[tuple[str, nn.Module]], heads: int = 0) -> list[Box]:
        """One box per (path, module), the last `heads` drawn as heads branching off the trunk."""
        boxes: list[Box] = []
        previous = None
        for index, (path, module) in enumerate(named):
            # The class is named unless the path already says it (cond_discriminator: CondDiscriminator).
            named_by_path = type(module).__name__.lower() == path.replace("_", "").lower()
            kind = "" if is_torch_module(module) or named_by_path else f": {type(module).__name__}"
            layers = ("nearest x2, " if getattr(module, "upsample", False) is True else "") + describe(module)
            if isinstance(module, nn.ModuleList) and len({type(m) for m in module}) == 1:
                kind, layers = f": {len(module)} x {type(module[0]).__name__}", f"each {describe(module[0])}"
            params = sum(p.numel() for p in module.parameters())
            title = f"{path}{kind}" + (f"  ({human_count(params)})" if params else "")
            head = index >= len(named) - heads
            chain = self.chain(module, previous if not head else boxes[len(named) - heads - 1].shapes[-1])
            boxes.append(Box(title, layers, chain, head))
            if not head:
                previous = chain[-1]
        return boxes


def shape(size: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in size)


def human_count(count: int) -> str:
    if count >= 1e6:
        return f"{count / 1e6:.1f}M"
    return f"{count / 1e3:.0f}k" if count >= 1e3 else str(count)


def stackgan_columns() -> tuple[list[Column], list[Column]]:
    """The generator's stages and the three discriminators of `network.py` at the course's sizes."""
    import network

    with torch.device("meta"):
        G = network.Generator(CLIP_DIM, PROJECTION_DIM, NOISE_DIM, STACKGAN_NG, 3, NUM_STAGE, "meta")
        D_lst = [network.Discriminator(PROJECTION_DIM, 3, STACKGAN_ND, 1, CLIP_DIM, stage, "meta")
                 for stage in range(NUM_STAGE)]
        recorder = Recorder([G, *D_lst])
        fake_images, mu, _ = G(torch.randn(BATCH, CLIP_DIM), torch.randn(BATCH, NOISE_DIM))
        for D, images in zip(D_lst, fake_images):
            D(images)      # the unconditional head
            D(images, mu)  # the conditional and align heads
    recorder.close()
    g_columns = []
    for stage, stage_module in enumerate(G.g_layer):
        named = [("condition_aug", G.condition_aug)] if stage == 0 else []
        named += list(stage_module.named_children())
        g_columns.append(Column(f"g_layer[{stage}]: {type(stage_module).__name__}, {64 * 2 ** stage} px",
                                recorder.boxes(named)))
    d_columns = []
    for stage, D in enumerate(D_lst):
        named = [(name, getattr(D, name)) for name in ("global_layer", "prior_layer", "uncond_discriminator",
                                                      "cond_discriminator", "align_cond_discriminator")]
        boxes = recorder.boxes(named, heads=3)
        if d_columns and boxes[2:] == d_columns[0].boxes[2:]:  # the heads read the same 512x4x4 at every stage
            boxes[2:] = [Box("the same three heads as D_lst[0]", "", [], head=True)]
        d_columns.append(Column(f"D_lst[{stage}]: Discriminator, {64 * 2 ** stage} px", boxes))
    return g_columns, d_columns


def galip_columns() -> list[Column]:
    """GALIP's generator (its blocks one by one) and stage-0 discriminator of `network_galip.py` at its defaults."""
    import network_galip

    with torch.device("meta"):
        G = network_galip.Generator(CLIP_DIM, PROJECTION_DIM, NOISE_DIM, GALIP_NG, 3, NUM_STAGE, "meta")
        D = network_galip.Discriminator(PROJECTION_DIM, 3, GALIP_ND, 1, CLIP_DIM, 0, "meta")
        recorder = Recorder([G, D])
        G(torch.randn(BATCH, CLIP_DIM), torch.randn(BATCH, NOISE_DIM))
        D(torch.randn(BATCH, network_galip.NUM_CLIP_LAYERS, GALIP_ND, network_galip.CLIP_GRID,
                      network_galip.CLIP_GRID), torch.randn(BATCH, CLIP_DIM))
    recorder.close()
    g_named = [("bridge", G.bridge)] + [(f"blocks[{i}]", block) for i, block in enumerate(G.blocks)]
    g_named.append(("to_rgb", G.to_rgb))
    d_named = [(f"blocks[{i}]", block) for i, block in enumerate(D.blocks)] + [("main", D.main),
                                                                               ("joint_conv", D.joint_conv)]
    return [Column(f"Generator: one stage, {G.image_size} px, box-averaged to 128 and 64 px", recorder.boxes(g_named)),
            Column("Discriminator (stage 0) on the frozen CLIP's tokens", recorder.boxes(d_named, heads=1))]


def wrap_chain(shapes: list[str], width: int) -> list[str]:
    """'a -> b -> c' broken into lines of at most `width` characters, only at the arrows."""
    if not shapes:
        return []
    lines = [shapes[0]]
    for item in shapes[1:]:
        if len(lines[-1]) + 4 + len(item) > width:
            lines[-1] += " ->"
            lines.append(item)
        else:
            lines[-1] += f" -> {item}"
    return lines


def draw(panels: list[tuple[str, list[Column]]], path: str, width: float = 7.0) -> None:
    """Panels one under the other; in each, columns side by side, each a top-down chain of boxes (heads branch
    off the trunk's last box)."""
    gap, indent, pad = 0.09, 0.16, 0.035
    layout = []  # (panel title, [(column, [(box, lines of text, height)])]) with every line already wrapped
    for title, columns in panels:
        column_width = width / len(columns)
        placed = []
        for column in columns:
            entries = []
            for box in column.boxes:
                chars = int((column_width - 0.1 - (indent if box.head else 0)) * CHARS_PER_INCH)
                heading = textwrap.wrap(box.title, chars, break_on_hyphens=False)
                lines = heading + textwrap.wrap(box.layers, chars, break_on_hyphens=False) + wrap_chain(box.shapes, chars)
                entries.append((box, lines, len(heading), len(lines) * LINE_HEIGHT + 2 * pad))
            placed.append((column, entries))
        layout.append((title, column_width, placed))
    heights = [0.42 + max(sum(h + gap for *_, h in entries) for _, entries in placed)
               for _, _, placed in layout]
    fig = plt.figure(figsize=(width, sum(heights)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(sum(heights), 0)
    ax.axis("off")
    arrow = dict(arrowstyle="-|>", lw=0.5, color="#4a4a4a", shrinkA=0, shrinkB=0, mutation_scale=5)
    top = 0.0
    for (title, column_width, placed), height in zip(layout, heights):
        ax.text(0.03, top + 0.05, title, fontsize=FONT_SIZE + 1, weight="bold", va="top")
        for index, (column, entries) in enumerate(placed):
            x0 = index * column_width + 0.03
            ax.text(x0, top + 0.23, column.title, fontsize=FONT_SIZE, weight="bold", va="top", style="italic")
            y = top + 0.38
            trunk_bottom = None
            for row, (box, lines, title_lines, box_height) in enumerate(entries):
                left = x0 + (indent if box.head else 0)
                box_width = column_width - 0.07 - (indent if box.head else 0)
                ax.add_patch(FancyBboxPatch((left, y), box_width, box_height, boxstyle="round,pad=0,rounding_size=0.04",
                                            facecolor="#fbe9d0" if box.head else "#e3edf7", edgecolor="#4a4a4a",
                                            linewidth=0.5))
                for number, line in enumerate(lines):
                    ax.text(left + 0.04, y + pad + number * LINE_HEIGHT, line, fontsize=FONT_SIZE, va="top",
                            weight="bold" if number < title_lines else "normal")
                if box.head:
                    ax.annotate("", xy=(left, y + box_height / 2), xytext=(x0 + indent / 2, trunk_bottom),
                                arrowprops=dict(arrow, connectionstyle="angle,angleA=-90,angleB=180,rad=0"))
                else:
                    if row:
                        ax.annotate("", xy=(x0 + box_width / 2, y), xytext=(x0 + box_width / 2, y - gap),
                                    arrowprops=arrow)
                    trunk_bottom = y + box_height
                y += box_height + gap
        top += height
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=300, format="png"))
    finally:
        plt.close(fig)


def draw_stackgan(path: str) -> None:
    g_columns, d_columns = stackgan_columns()
    sizes = f"Ng {STACKGAN_NG}, Nd {STACKGAN_ND}, P {PROJECTION_DIM}, z {NOISE_DIM}, CLIP {CLIP_DIM}"
    draw([(f"network.py's Generator at the course's sizes ({sizes}); shapes C x H x W", g_columns),
          ("Discriminators: the trunk, then three heads on its 512x4x4 features (two also read mu)", d_columns)],
         path)


def draw_galip(path: str) -> None:
    draw([(f"network_galip.py at its defaults (g_in_chans {GALIP_NG}, CLIP tokens {GALIP_ND} wide, z {NOISE_DIM}, "
           f"CLIP {CLIP_DIM}); shapes C x H x W", galip_columns())], path)


FIGURES = {"stackgan": draw_stackgan, "galip": draw_galip}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Draw a model's architecture from its real modules.")
    parser.add_argument("--arch", choices=sorted(FIGURES), default="stackgan")
    parser.add_argument("--out", required=True, help="PNG path")
    args = parser.parse_args(argv)
    FIGURES[args.arch](args.out)
    print(f"{args.arch} architecture -> {args.out}")


if __name__ == "__main__":
    main()
