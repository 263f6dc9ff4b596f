"""`FixationSettings`: every choice a segmentation fixation depends on, defined once.

The unravel (K, mass, shift, the Dense rule) and the heat maps drawn from its points (blur,
outlier removal, weighting) travel together: `SegUnravel`, `fixation_maps`, the fixation
files, the SavedModel's `fixations` signature and the analyses all take this one object,
and `tools/fixations.py` and `tools/export.py` generate their flags from its fields.
docs/method.md ("Segmentation unravel", "Heat maps") says what each one does.
"""

import dataclasses
import re
import typing

from tf_segunravel import flag_settings
from tf_segunravel.flag_settings import positive_integer, setting

if typing.TYPE_CHECKING:
    import tensorflow as tf

SHIFTS = ("none", "partial", "full")
CHANNEL_ORDERS = ("rgb", "bgr")
DENSE_RULES = ("topk", "positive")
SEED_RULES = ("grid", "upsampled")
TIE_RULES = ("first", "last")
RESIZE_RULES = ("centres", "corners")
RUNNER_UP = "runner_up"
RANKINGS = ("points", "density", "segment")
SIGMA_UNITS = ("pixels", "score_cells")
PATH_WEIGHTS = ("count", "contribution")

# Named sets of fields (`FixationSettings.from_preset`, `--preset`). "seg_unravel_code" is
# what Seg-Unravel's released code does where it changes which points come out
# (docs/method.md, "Against the authors' code"); the heat maps keep the package's rendering.
PRESETS = {
    "seg_unravel_code": {
        "shift": "full",
        "seeding": "upsampled",
        "ties": "last",
        "padded_taps": True,
        "resize_mapping": "corners",
        "weighted": False,
    },
}


def _contrast_ok(value):
    return value is None or bool(re.fullmatch(r"[A-Za-z0-9_.-]+", value))


@dataclasses.dataclass(frozen=True)
class FixationSettings:
    """How points are traced and how they become heat maps (docs/method.md section 2)."""

    k: int = setting(
        1,
        "Unravel: channels kept per unit (branching when > 1).",
        check=positive_integer,
        requirement="must be a positive integer",
    )
    mass: float | None = setting(
        None,
        "Unravel: instead of --k, keep the fewest channels reaching this fraction of a "
        "unit's positive contribution (at most --max_k).",
        check=lambda v: 0 < v <= 1,
        requirement="must be in (0, 1]",
    )
    max_k: int = setting(
        16,
        "Unravel: the most channels --mass keeps per unit.",
        check=positive_integer,
        requirement="must be a positive integer",
    )
    shift: str = setting(
        "partial",
        "Unravel: spatial shift (partial: full where dilation is 1, none where larger).",
        choices=SHIFTS,
    )
    dense_rule: str = setting(
        "topk",
        "Unravel: Dense layers keep the top K inputs, or every positive one (CNN-Fixations).",
        choices=DENSE_RULES,
    )
    seeding: str = setting(
        "grid",
        "Unravel: seed every score position on its predicted class (grid), or, as "
        "Seg-Unravel's code, every score position under a pixel of the class in the scores "
        "upsampled to the input (upsampled: a superset that spills over class borders).",
        choices=SEED_RULES,
    )
    ties: str = setting(
        "first",
        "Unravel: among tied channels or taps take the lowest index (first), or the highest "
        "(last, what Seg-Unravel's code does on its kernels).",
        choices=TIE_RULES,
    )
    padded_taps: bool = setting(
        False,
        "Unravel: zero-padded taps compete for the full-shift tap and in pooling windows, a "
        "winner outside the map clamped back into it (as Seg-Unravel's code).",
    )
    resize_mapping: str = setting(
        "centres",
        "Unravel: a resizing layer maps output position p to floor((p + 0.5) in / out) "
        "(centres), or to floor(p (in - 1) / (out - 1)) as Caffe's aligned-corner Interp "
        "(corners).",
        choices=RESIZE_RULES,
    )
    contrast: str | None = setting(
        None,
        "Unravel: trace the margin of each seed's class over 'runner_up' (the best other "
        "class at that position) or over one class (id, or name where the tool knows the "
        "names) instead of the class score alone.",
        check=_contrast_ok,
        requirement="must be runner_up, a class id or a class name",
    )
    path_weight: str = setting(
        "count",
        "Unravel: what a point carries: the number of seed paths through it (count), or "
        "the product along each path of the chosen channel's share of its unit's positive "
        "contribution (activation x weight) at every convolution and Dense layer, summed "
        "over the paths (contribution).",
        choices=PATH_WEIGHTS,
    )
    sigma: float = setting(
        20.0,
        "Heat maps: Gaussian blur in pixels (0: the bare point mask).",
        check=lambda v: v >= 0,
        requirement="must be >= 0",
    )
    sigma_unit: str = setting(
        "pixels",
        "Heat maps: --sigma in image pixels, or in score-grid cells (score_cells: sigma times "
        "the score grid's stride on the image, from the model's geometry, so the blur follows "
        "the spacing of the seeds: 8 px per cell for LargeFOV, 1 for a stride-1 U-Net).",
        choices=SIGMA_UNITS,
    )
    ranking: str = setting(
        "points",
        "Heat maps: how pixels that no point's blur reaches are ordered: they tie at 0 "
        "(points); by the class's points blurred over the whole image (density); the class's "
        "segment first, blurred, then by density (segment). A tie-break only: it reorders "
        "pixels whose blurred points differ by less than 0.001 of the peak.",
        choices=RANKINGS,
    )
    outlier_radius: float = setting(
        0.02,
        "Heat maps: outlier radius, fraction of the image diagonal (0: keep every point).",
        check=lambda v: 0 <= v < 1,
        requirement="must be in [0, 1)",
    )
    weighted: bool = setting(
        True, "Heat maps: weight points by what they carry (--path_weight), or count each once."
    )

    def __post_init__(self):
        flag_settings.validate(self)

    def as_dict(self) -> dict[str, typing.Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_preset(cls, name: str, **fields: typing.Any) -> "FixationSettings":
        """The settings of preset `name` (`PRESETS`), with `fields` replacing single ones:
        `FixationSettings.from_preset("seg_unravel_code", k=3)`."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **fields})

    def contrast_class(
        self, class_names: typing.Sequence[str] | None = None, num_classes: int | None = None
    ) -> str | int | None:
        """The contrast as the engine takes it: None, "runner_up", or a class id (names are
        looked up in `class_names`; ids are checked against `num_classes` when given)."""
        value = self.contrast
        if value is None or value == RUNNER_UP:
            return value
        if value.isdigit():
            index = int(value)
        elif class_names and value in class_names:
            index = list(class_names).index(value)
        else:
            raise ValueError(
                f"contrast={value!r} is neither {RUNNER_UP!r}, a class id, nor a known class name"
            )
        if num_classes is not None and index >= num_classes:
            raise ValueError(f"contrast={value!r} is not a class of this {num_classes}-class model")
        return index

    UNRAVEL_FIELDS = (
        "k",
        "mass",
        "max_k",
        "shift",
        "dense_rule",
        "seeding",
        "ties",
        "padded_taps",
        "resize_mapping",
        "contrast",
        "path_weight",
    )


def _floats(items):
    return tuple(float(item) for item in items)


@dataclasses.dataclass(frozen=True)
class InputSettings:
    """What the model expects as input, applied to RGB 0..255 pixels before it sees them:
    the channels reordered (`channels`), multiplied by `scale`, minus `mean` (one value, or
    one per channel in the model's channel order). The defaults feed RGB 0..255 unchanged.

    [0, 1]: scale=1/255. [-1, 1]: scale=2/255, mean=(1,). Caffe's BGR minus mean:
    channels="bgr", mean=(104.008, 116.669, 122.675). Points stay in the image's pixels:
    only the values change. The tools' flags are `--input_scale`, `--input_mean`,
    `--input_channels`.
    """

    scale: float = setting(
        1.0,
        "Input: multiply the 0..255 pixels by this (0.00392157 for [0, 1]).",
        check=lambda v: v > 0,
        requirement="must be > 0",
    )
    mean: tuple = setting(
        (0.0,),
        "Input: subtract this after scaling, one value or one per channel in the model's "
        "channel order (1 for [-1, 1] with --input_scale=0.00784314).",
        check=lambda v: len(v) in (1, 3),
        requirement="must be one number or three, comma-separated",
        parse=_floats,
    )
    channels: str = setting(
        "rgb",
        "Input: the model's channel order (bgr for Caffe-trained networks).",
        choices=CHANNEL_ORDERS,
    )

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        flag_settings.validate(self)

    @property
    def identity(self) -> bool:
        return self.scale == 1 and not any(self.mean) and self.channels == "rgb"

    def apply(self, images: typing.Any) -> "tf.Tensor":
        """float32 model input from RGB 0..255 images [B, H, W, 3] (any real dtype)."""
        import tensorflow as tf

        x = tf.cast(images, tf.float32)
        if self.identity:
            return x
        if self.channels == "bgr":
            x = x[..., ::-1]
        return x * self.scale - tf.constant(self.mean, tf.float32)

    def as_dict(self) -> dict[str, typing.Any]:
        return dataclasses.asdict(self)
