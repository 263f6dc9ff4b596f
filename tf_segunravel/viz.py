"""Figures: segmentation colours, fixation overlays and fixation-flow GIFs (matplotlib)."""

import typing

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from tf_segunravel.atomic import save_atomically
from tf_segunravel.data.labels import IGNORE_LABEL, class_name, voc_colormap


def colorize(labels: typing.Any) -> np.ndarray:
    """uint8 RGB [H, W, 3] of class ids in the VOC colours (255 void in cream)."""
    colormap = voc_colormap()
    colormap[IGNORE_LABEL] = (224, 224, 192)
    return colormap[np.asarray(labels, np.int64) % 256]


# The flow GIF's frames are drawn at this resolution (dots per inch of their figures).
FRAME_DPI = 80


def _figure_to_array(figure):
    """uint8 RGB [H, W, 3]: the figure as Agg drew it. Read from the canvas, not through a PNG
    written and read back: the same pixels (tests/test_viz.py holds it to savefig's PNG) for
    26 instead of 42-46 ms a frame (a flow GIF has a frame per layer)."""
    figure.canvas.draw()
    pixels = np.array(figure.canvas.buffer_rgba())[..., :3]
    plt.close(figure)
    return pixels


def overlay_figure(
    image: np.ndarray,
    labels: np.ndarray,
    classes: typing.Sequence[int] | np.ndarray,
    maps: np.ndarray,
    points: np.ndarray,
    counts: np.ndarray,
    class_names: typing.Sequence[str] | None,
    path: str,
) -> None:
    """Image, predicted segmentation, and one panel per class: heat map and fixations.

    Args:
      image: uint8 [H, W, 3]; labels: [H, W] predicted class ids at image size.
      classes: the classes to show; maps: [len(classes), H, W] in [0, 1].
      points: [N, 3] rows (class, y, x); counts: [N].
      class_names: names indexed by class id (or None for numbers).
    """
    panels = 2 + len(classes)
    columns = min(panels, 4)
    rows = -(-panels // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.3 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    axes.flat[0].imshow(image)
    axes.flat[0].set_title("image")
    axes.flat[1].imshow(colorize(labels))
    axes.flat[1].set_title("prediction")

    for panel, (cls, heat) in enumerate(zip(classes, maps, strict=True), start=2):
        axis = axes.flat[panel]
        axis.imshow(image)
        # Transparent where the map is (nearly) empty, so the image stays readable.
        axis.imshow(np.ma.masked_less(heat, 0.02), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        mine = points[:, 0] == cls
        if mine.any():
            sizes = 4 + 30 * np.sqrt(counts[mine] / counts[mine].max())
            axis.scatter(
                points[mine, 2],
                points[mine, 1],
                s=sizes,
                c="white",
                edgecolors="black",
                linewidths=0.4,
            )
        axis.set_title(class_name(class_names, cls))
    figure.tight_layout()
    save_atomically(path, lambda p: figure.savefig(p, dpi=90, format="png"))
    plt.close(figure)


def comparison_figure(
    image: np.ndarray,
    classes: typing.Sequence[int] | np.ndarray,
    maps_by_method: dict[str, np.ndarray],
    class_names: typing.Sequence[str] | None,
    path: str,
    title: str | None = None,
) -> None:
    """One row per class, one column per method: each method's heat map of that class over
    the image, side by side (`tools/fixations.py --compare`, the faithfulness experiment).

    maps_by_method: {method: [len(classes), H, W] in [0, 1]}, fixations first.
    """
    methods = list(maps_by_method)
    rows, columns = max(1, len(classes)), len(methods)
    figure, axes = plt.subplots(rows, columns, figsize=(2.8 * columns, 2.9 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for row, cls in enumerate(classes):
        for column, method in enumerate(methods):
            axis = axes[row, column]
            axis.imshow(image)
            heat = maps_by_method[method][row]
            axis.imshow(np.ma.masked_less(heat, 0.02), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axis.set_title(f"{class_name(class_names, cls)}: {method}", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    save_atomically(path, lambda p: figure.savefig(p, dpi=80, format="png"))
    plt.close(figure)


def curves_figure(curves: dict[str, dict[str, list[float]]], path: str) -> None:
    """Deletion and insertion curves side by side, one line per method: the class's region
    score against the fraction of pixels removed (or given back).

    curves: {method: {"deletion": [f at each step], "insertion": [...]}}.
    """
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, mode in zip(axes, ("deletion", "insertion"), strict=True):
        for method, by_mode in curves.items():
            values = by_mode.get(mode) or []
            if len(values):
                axis.plot(np.linspace(0, 1, len(values)), values, label=method)
        axis.set_xlabel(f"fraction of pixels {'removed' if mode == 'deletion' else 'given back'}")
        axis.set_ylabel("class's region score")
        axis.set_title(mode)
        axis.set_ylim(0, 1)
    axes[1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    save_atomically(path, lambda p: figure.savefig(p, dpi=90, format="png"))
    plt.close(figure)


def flow_gif(image: np.ndarray, flow: typing.Sequence, path: str, frame_ms: int = 600) -> None:
    """One frame per layer: the fixation points on the image at that layer's resolution.

    flow: the `FlowStep`s (layer name, (height, width), points [M, 4] (b, class, y, x),
    counts) of one image (b is ignored), from the scores down to the image.
    """
    colours = voc_colormap()[1:] / 255.0
    frames = []
    for name, (height, width), points, counts in flow:
        small = np.asarray(
            Image.fromarray(image).resize(
                (max(width, 1), max(height, 1)), Image.Resampling.BILINEAR
            )
        )
        figure, axis = plt.subplots(figsize=(4, 4 * height / max(width, 1) + 0.4), dpi=FRAME_DPI)
        axis.imshow(small, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        if len(points):
            colour = colours[(points[:, 1] - 1) % len(colours)]
            sizes = 6 + 40 * np.sqrt(counts / counts.max())
            axis.scatter(
                points[:, 3], points[:, 2], s=sizes, c=colour, edgecolors="white", linewidths=0.4
            )
        axis.set_title(f"{name}  ({height}x{width})")
        axis.axis("off")
        frames.append(Image.fromarray(_figure_to_array(figure)))
    size = frames[0].size
    frames = [frame.resize(size) for frame in frames]
    save_atomically(
        path,
        lambda p: frames[0].save(
            p, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0
        ),
    )
