"""A synthetic image-classification set generated from a seed, for `famkd demo` without downloads.

These are generated pictures, not real images. Each 32x32 RGB image is split into a 2x2 grid
of cells holding a red object and up to three other objects; every object is one of
`num_shapes` shapes (disk, square, triangle, ...) at a random size, rotation and offset inside
its cell, optionally filled with an oriented grating, over a random background colour with a
gradient, an oriented grating and pixel noise. The class is an ordered pair of shapes:

- layout "diagonal" (the default): (shape of the red object, shape of the object diagonally
  opposite it). The other objects share the opposite object's colour and never its shape, so
  only the spatial relation across the whole image identifies the class; a network whose
  receptive field spans the image learns it in far fewer steps than a shallow one.
- layout "colour": (shape of the red object, shape of the blue object), distractors in other
  colours; a binding of colour to shape that even small networks learn given enough steps.

The `SyntheticSpec` fields set the difficulty (layout, classes, distractors, noise, texture,
size and colour jitter).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from famkd.data.datasets import ImageDataset, SubsetOptions
from famkd.data.loader import in_memory_loader
from famkd.data.registry import DatasetEntry, register_dataset
from famkd.errors import ConfigError

SHAPE_NAMES = ("disk", "square", "triangle", "plus", "ring", "cross", "bar", "half-disk")
KEY_COLOURS = ((0.90, 0.15, 0.15), (0.15, 0.25, 0.90))  # red, blue: their objects carry the class
CLASS_RULES = {
    "diagonal": "shape of the red object and of the one diagonally opposite",
    "colour": "shapes of the red and the blue object",
}
DISTRACTOR_COLOURS = ((0.15, 0.80, 0.20), (0.85, 0.80, 0.15), (0.80, 0.80, 0.80))  # green, yellow, grey


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Difficulty rises with distractors, noise, texture, jitter and num_classes."""

    num_classes: int = 9  # <= num_shapes ** 2; classes are the first pairs of a seeded shuffle
    train_per_class: int = 800
    test_per_class: int = 100
    layout: str = "diagonal"  # "diagonal": class = (red shape, shape opposite it); "colour": (red, blue shape)
    num_shapes: int = 3  # shapes used, the first of SHAPE_NAMES
    distractors: int = 1  # extra objects (0-2) in the free cells
    radius: tuple[float, float] = (4.5, 7.5)  # object radius range, pixels
    max_rotation_deg: float = 20.0  # objects rotate uniformly in +-this
    colour_jitter: float = 0.12  # std of per-object colour noise, [0, 1] units
    object_texture: float = 0.0  # amplitude of the grating inside objects (0 = flat colour)
    background_texture: float = 0.05  # amplitude of the background grating
    noise: float = 0.04  # std of per-pixel Gaussian noise
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.num_shapes <= len(SHAPE_NAMES):
            raise ConfigError(f"num_shapes must be in [1, {len(SHAPE_NAMES)}], got {self.num_shapes}")
        if not 1 <= self.num_classes <= self.num_shapes**2:
            raise ConfigError(
                f"num_classes must be in [1, {self.num_shapes**2}] for {self.num_shapes} shapes, got {self.num_classes}"
            )
        if self.layout not in ("colour", "diagonal"):
            raise ConfigError(f"layout must be 'colour' or 'diagonal', got {self.layout!r}")
        if self.layout == "diagonal" and self.num_shapes < 3:
            raise ConfigError("the diagonal layout needs num_shapes >= 3 (distractors avoid the class shape)")
        if not 0 <= self.distractors <= 2:
            raise ConfigError(f"distractors must be 0, 1 or 2 (the free cells), got {self.distractors}")
        if self.train_per_class < 1 or self.test_per_class < 1:
            raise ConfigError("train_per_class and test_per_class must be >= 1")


IMAGE_SIZE = 32
CELL = IMAGE_SIZE // 2


def synthetic_datasets(spec: SyntheticSpec = SyntheticSpec()) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) generated from `spec`; the same spec always gives the same tensors."""
    pairs = _class_pairs(spec)
    train_images, train_labels = _generate(spec, pairs, spec.train_per_class, split_seed=0)
    test_images, test_labels = _generate(spec, pairs, spec.test_per_class, split_seed=1)
    pixels = train_images.to(torch.float64) / 255.0
    mean = tuple(pixels.mean(dim=(0, 2, 3)).tolist())
    std = tuple(pixels.std(dim=(0, 2, 3), unbiased=False).tolist())
    second = "blue {}" if spec.layout == "colour" else "{} opposite"
    names = tuple(f"red {SHAPE_NAMES[red]} + " + second.format(SHAPE_NAMES[other]) for red, other in pairs)
    datasets = []
    for split, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        description = (
            f"synthetic embedded dataset (generated, not real images; seed {spec.seed}, "
            f"{spec.num_classes} classes = {CLASS_RULES[spec.layout]}), {split}, {len(labels)} images"
        )
        datasets.append(ImageDataset(images, labels, spec.num_classes, mean, std, description, names))
    return datasets[0], datasets[1]


def synthetic_datasets_from_config(
    options: SubsetOptions, spec: SyntheticSpec = SyntheticSpec()
) -> tuple[ImageDataset, ImageDataset]:
    """`synthetic_datasets` with data.classes and data.train_per_class (when non-zero) replacing the spec's."""
    most_classes = spec.num_shapes**2
    if options.classes > most_classes:
        raise ConfigError(f"data.classes={options.classes} but the synthetic dataset has only {most_classes} classes")
    num_classes = options.classes or spec.num_classes
    train_per_class = options.train_per_class or spec.train_per_class
    return synthetic_datasets(dataclasses.replace(spec, num_classes=num_classes, train_per_class=train_per_class))


@dataclass
class SyntheticOptions(SubsetOptions):
    """The synthetic set: data.classes and data.train_per_class replace the spec's when non-zero; root is unused."""


register_dataset("synthetic")(
    DatasetEntry(SyntheticOptions, synthetic_datasets_from_config, lambda _: IMAGE_SIZE, in_memory_loader)
)


def _class_pairs(spec: SyntheticSpec) -> list[tuple[int, int]]:
    """(red shape, blue shape) of each class: the first num_classes of a seeded shuffle of all pairs."""
    generator = torch.Generator().manual_seed(spec.seed)
    order = torch.randperm(spec.num_shapes**2, generator=generator)[: spec.num_classes]
    return [(int(i) // spec.num_shapes, int(i) % spec.num_shapes) for i in order]


def _generate(
    spec: SyntheticSpec, pairs: list[tuple[int, int]], per_class: int, split_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 32, 32) images and int64 (N,) labels, classes interleaved 0, 1, ..., K-1, 0, ..."""
    generator = torch.Generator().manual_seed(spec.seed * 1_000_003 + 7919 * split_seed + 1)
    count = per_class * spec.num_classes
    labels = torch.arange(spec.num_classes).repeat(per_class)
    pair_table = torch.tensor(pairs, dtype=torch.int64)
    red_shape, second_shape = pair_table[labels, 0], pair_table[labels, 1]
    if spec.layout == "colour":
        shapes, colours, cell_of_slot = _colour_layout(spec, second_shape, generator)
    else:
        shapes, colours, cell_of_slot = _diagonal_layout(spec, second_shape, generator)
    shapes = [red_shape, *shapes]
    colours = [torch.tensor(KEY_COLOURS[0]).expand(count, 3), *colours]
    cells = _to_cells(_background(spec, count, generator))  # (N, 4, 3, 16, 16)
    rows = torch.arange(count)
    for slot, (shape, colour) in enumerate(zip(shapes, colours, strict=True)):
        mask, texture = _draw_object(spec, shape, generator)
        jittered = colour + spec.colour_jitter * torch.randn(count, 3, generator=generator)
        fill = jittered[:, :, None, None] * texture[:, None]
        cell = cell_of_slot[:, slot]
        cells[rows, cell] = torch.where(mask[:, None], fill, cells[rows, cell])
    canvas = _from_cells(cells)
    canvas += spec.noise * torch.randn(canvas.shape, generator=generator)
    images = (canvas.clamp_(0.0, 1.0) * 255.0).round_().to(torch.uint8)
    return images.contiguous(), labels


def _colour_layout(spec: SyntheticSpec, blue_shape: torch.Tensor, generator: torch.Generator):
    """Shapes and colours of the objects after the red one, and (N, 4) cell of each slot.

    The blue object carries the class; distractors take any shape in a non-key colour; the
    objects fill the cells in a random order per image.
    """
    count = len(blue_shape)
    shapes = [blue_shape]
    colours = [torch.tensor(KEY_COLOURS[1]).expand(count, 3)]
    palette = torch.tensor(DISTRACTOR_COLOURS)
    for _ in range(spec.distractors):
        shapes.append(torch.randint(0, spec.num_shapes, (count,), generator=generator))
        colours.append(palette[torch.randint(0, len(palette), (count,), generator=generator)])
    cell_of_slot = torch.argsort(torch.rand(count, 4, generator=generator), dim=1)
    return shapes, colours, cell_of_slot


def _diagonal_layout(spec: SyntheticSpec, opposite_shape: torch.Tensor, generator: torch.Generator):
    """Shapes and colours of the objects after the red one, and (N, 4) cell of each slot.

    The object diagonally opposite the red one carries the class; the distractors in the other
    two cells share its colour and never its shape, so only the spatial relation tells them apart.
    """
    count = len(opposite_shape)
    palette = torch.tensor((KEY_COLOURS[1], *DISTRACTOR_COLOURS))
    colour = palette[torch.randint(0, len(palette), (count,), generator=generator)]
    shapes, colours = [opposite_shape], [colour]
    for _ in range(spec.distractors):
        other = torch.randint(0, spec.num_shapes - 1, (count,), generator=generator)
        shapes.append(other + (other >= opposite_shape).long())
        colours.append(colour)
    red_cell = torch.randint(0, 4, (count,), generator=generator)
    side_cells = torch.where((red_cell == 0) | (red_cell == 3), 1, 0)  # the anti-diagonal's first cell
    swap = torch.randint(0, 2, (count,), generator=generator)
    first_side = torch.where(swap == 1, 3 - side_cells, side_cells)
    cell_of_slot = torch.stack([red_cell, 3 - red_cell, first_side, 3 - first_side], dim=1)
    return shapes, colours, cell_of_slot


def _to_cells(canvas: torch.Tensor) -> torch.Tensor:
    """(N, 3, 32, 32) -> (N, 4, 3, 16, 16), cells in row-major order (top-left, top-right, ...)."""
    count = len(canvas)
    return canvas.view(count, 3, 2, CELL, 2, CELL).permute(0, 2, 4, 1, 3, 5).reshape(count, 4, 3, CELL, CELL)


def _from_cells(cells: torch.Tensor) -> torch.Tensor:
    """Inverse of `_to_cells`."""
    count = len(cells)
    return cells.view(count, 2, 2, 3, CELL, CELL).permute(0, 3, 1, 4, 2, 5).reshape(count, 3, IMAGE_SIZE, IMAGE_SIZE)


def _pixel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, size, size) y and x coordinates of pixel centres."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return y[None], x[None]


def _grating(count: int, size: int, generator: torch.Generator, period: tuple[float, float]) -> torch.Tensor:
    """(count, size, size) sin waves in [-1, 1] with random orientation, phase and period (pixels)."""
    y, x = _pixel_grid(size)
    angle = math.pi * torch.rand(count, 1, 1, generator=generator)
    low, high = period
    wavelength = low + (high - low) * torch.rand(count, 1, 1, generator=generator)
    phase = 2 * math.pi * torch.rand(count, 1, 1, generator=generator)
    along = x * torch.cos(angle) + y * torch.sin(angle)
    return torch.sin(2 * math.pi * along / wavelength + phase)


def _background(spec: SyntheticSpec, count: int, generator: torch.Generator) -> torch.Tensor:
    """float (count, 3, 32, 32): a random mid colour, a linear gradient and an oriented grating."""
    y, x = _pixel_grid(IMAGE_SIZE)
    base = 0.35 + 0.3 * torch.rand(count, 3, 1, 1, generator=generator)
    slope = 0.15 * torch.randn(count, 3, 2, generator=generator) / IMAGE_SIZE
    gradient = slope[..., 0, None, None] * (y[None] - CELL) + slope[..., 1, None, None] * (x[None] - CELL)
    grating = _grating(count, IMAGE_SIZE, generator, period=(3.0, 10.0))[:, None]
    tint = torch.rand(count, 3, 1, 1, generator=generator)
    return base + gradient + spec.background_texture * tint * grating


def _draw_object(
    spec: SyntheticSpec, shape: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """bool (N, 16, 16) mask of one object per image within a cell, and its (N, 16, 16) texture in [1-a, 1]."""
    count = len(shape)
    low, high = spec.radius
    radius = low + (high - low) * torch.rand(count, 1, 1, generator=generator)
    slack = (CELL - 2 * radius).clamp(min=0.0)
    centre_y = CELL / 2 + slack * (torch.rand(count, 1, 1, generator=generator) - 0.5)
    centre_x = CELL / 2 + slack * (torch.rand(count, 1, 1, generator=generator) - 0.5)
    rotation = math.radians(spec.max_rotation_deg) * (2 * torch.rand(count, 1, 1, generator=generator) - 1)
    y, x = _pixel_grid(CELL)
    dy, dx = (y - centre_y) / radius, (x - centre_x) / radius
    cos, sin = torch.cos(rotation), torch.sin(rotation)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    mask = torch.zeros(count, CELL, CELL, dtype=torch.bool)
    for index in range(spec.num_shapes):
        chosen = shape == index
        if chosen.any():
            mask[chosen] = _shape_mask(SHAPE_NAMES[index], u[chosen], v[chosen])
    texture = 1.0 - spec.object_texture * 0.5 * (1.0 + _grating(count, CELL, generator, period=(2.5, 6.0)))
    return mask, texture


def _shape_mask(name: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """bool mask of a unit-size shape in object coordinates (u right, v down, radius 1)."""
    au, av = u.abs(), v.abs()
    if name == "disk":
        return u * u + v * v <= 1.0
    if name == "square":
        return torch.maximum(au, av) <= 0.8
    if name == "triangle":
        return (v <= 0.7) & (2.0 * au - v <= 0.9)
    if name == "plus":
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    if name == "ring":
        return (u * u + v * v <= 1.0) & (u * u + v * v >= 0.35)
    if name == "cross":
        p, q = (u + v) / math.sqrt(2.0), (u - v) / math.sqrt(2.0)
        return ((p.abs() <= 0.3) & (q.abs() <= 1.0)) | ((q.abs() <= 0.3) & (p.abs() <= 1.0))
    if name == "bar":
        return (av <= 0.35) & (au <= 1.0)
    if name == "half-disk":
        return (u * u + v * v <= 1.0) & (v >= -0.1)
    raise ValueError(f"unknown shape {name!r}")
