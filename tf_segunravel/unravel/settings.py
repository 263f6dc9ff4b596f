"""`FixationSettings`: every choice a segmentation fixation depends on, defined once.

The unravel (K, mass, shift, the Dense rule) and the heat maps drawn from its points (blur,
outlier removal, weighting) travel together: `SegUnravel`, `fixation_maps`, the fixation
files, the SavedModel's `fixations` signature and the analyses all take this one object,
and `tools/fixations.py` and `tools/export.py` generate their flags from its fields.
docs/method.md ("Segmentation unravel", "Heat maps") says what each one does.
"""

import dataclasses

from tf_segunravel import settings
from tf_segunravel.settings import positive_integer, setting

SHIFTS = ("none", "partial", "full")
DENSE_RULES = ("topk", "positive")


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
    sigma: float = setting(
        20.0,
        "Heat maps: Gaussian blur in pixels (0: the bare point mask).",
        check=lambda v: v >= 0,
        requirement="must be >= 0",
    )
    outlier_radius: float = setting(
        0.02,
        "Heat maps: outlier radius, fraction of the image diagonal (0: keep every point).",
        check=lambda v: 0 <= v < 1,
        requirement="must be in [0, 1)",
    )
    weighted: bool = setting(True, "Heat maps: weight points by their path counts.")

    def __post_init__(self):
        settings.validate(self)

    def as_dict(self):
        return dataclasses.asdict(self)
