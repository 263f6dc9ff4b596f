"""One table of explanation methods: fixations and every baseline, each one record.

    from tf_segunravel import methods

    entry = methods.get("gradcam")
    maps = entry.maps(graph, images, classes)  # float32 [B, len(classes), H, W] in [0, 1]
    methods.names()                           # every registered name, in table order

Every method answers the same question for a segmentation network: what drove class c over
its region R (the network's own prediction by default, or the `regions` given: the
randomisation check keeps the clean network's)? `maps(graph, images, classes, regions, seed,
options)` takes a `graph.ModelGraph`, RGB 0..255 images [B, H, W, 3], class ids, optional
regions (labels on the score grid [B, h, w], labels at image size [B, H, W]), a seed, and
`MethodOptions` (the fixations' settings, Grad-CAM's layer); it returns one map per image and
class, at the image's size, non-negative and scaled to [0, 1] per map.

Everything that lists methods reads this table: the faithfulness runner, the fixation tool's
`--compare`, the experiments tool's `--methods`, and the demo. `register_method` adds an
entry (undone by its `Registration`); `tests/test_methods.py` holds every entry to the same
contract. Importing this module loads no TensorFlow (the tools list the names in their
`--help` before TensorFlow loads); the methods import what they need when called.
"""

import contextlib
import dataclasses
import typing
from collections.abc import Callable

import numpy as np

from tf_segunravel.errors import InputError
from tf_segunravel.unravel.settings import RUNNER_UP, FixationSettings

# fixations_stride_kernel's blur, in score-grid cells (16 px at LargeFOV's stride of 8).
STRIDE_KERNEL_CELLS = 2.0

if typing.TYPE_CHECKING:
    from tf_segunravel.unravel.graph import ModelGraph
    from tf_segunravel.unravel.tracer import SegUnravel


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    """What some methods read beyond the image: the fixations' unravel and heat-map settings
    (their `contrast` is each fixation entry's own), and Grad-CAM's feature layer (None:
    `baselines.default_layer`)."""

    settings: FixationSettings = dataclasses.field(default_factory=FixationSettings)
    gradcam_layer: str | None = None


@dataclasses.dataclass(frozen=True)
class Cost:
    """What one map costs: forward and backward passes, counted `per` image (all its classes
    at once), per class, or per channel of the method's layer (Score-CAM)."""

    forward: int
    backward: int
    per: str = "class"


@dataclasses.dataclass(frozen=True)
class Method:
    """One explanation method.

    name: what `--methods` and `--compare` call it.
    maps: `maps(graph, images, classes, regions=None, seed=0, options=MethodOptions())`
      -> float32 [B, len(classes), H, W] in [0, 1] (the module docstring).
    extra: the `pip install -e ".[extra]"` it needs, or None.
    cost: its forward and backward passes.
    reads_weights: whether its maps depend on the weights beyond the regions given (the
      randomisation check expects a map that does not to stay the same).
    fixations: whether its maps are the unravel's own (the faithfulness experiment over seeds
      sets each of these against every other method).
    """

    name: str
    maps: Callable[..., np.ndarray]
    extra: str | None = None
    cost: Cost = dataclasses.field(default_factory=lambda: Cost(1, 0, "image"))
    reads_weights: bool = True
    fixations: bool = False

    def available(self) -> bool:
        """Whether its extra is installed."""
        from tf_segunravel import baselines

        return self.extra is None or baselines.available()


def engine_for(graph: "ModelGraph", settings: FixationSettings) -> "SegUnravel":
    """The fixation engine of `graph` with `settings`' unravel fields, made on first use and
    kept with the graph (`ModelGraph.engines`): a compiled unravel is traced once, not per
    call (a trace costs seconds; a walk of a small network, milliseconds), and variants that
    differ only in their heat maps share it. Kept on the graph, not in a table here: a table
    keyed on the graph would keep every graph alive through its engine (the randomisation
    check makes one per randomised model)."""
    from tf_segunravel.unravel.tracer import SegUnravel

    key = FixationSettings(**{name: getattr(settings, name) for name in settings.UNRAVEL_FIELDS})
    if key not in graph.engines:
        graph.engines[key] = SegUnravel(graph, key)
    return graph.engines[key]


def _maps_for(graph: "ModelGraph", settings: FixationSettings) -> Callable:
    """`unravel.maps.fixation_maps` with `settings`, compiled once per graph and settings
    (eager, the heat maps cost twice their compiled time: docs/benchmarks.md)."""
    import tensorflow as tf

    from tf_segunravel.unravel.maps import fixation_maps

    key = ("maps", settings)
    if key not in graph.engines:

        def draw(result, labels, height, width):
            return fixation_maps(result, height, width, settings, labels)

        graph.engines[key] = tf.function(draw, reduce_retracing=True)
    return graph.engines[key]


def _fixation_maps(**fields):
    def maps(graph, images, classes, regions=None, seed=0, options=None):
        """Each image walked on its own (the engine is compiled for one image at a time),
        seeded by `regions` where given, else by the network's own prediction; the entry's
        `fields` replace those of `options.settings`."""
        from tf_segunravel.unravel.maps import heatmap_sigma

        del seed  # deterministic
        options = options or MethodOptions()
        settings = dataclasses.replace(options.settings, **fields)
        engine, draw = engine_for(graph, settings), _maps_for(graph, settings)
        images = np.asarray(images, np.float32)
        height, width = images.shape[1:3]
        out = []
        for index, image in enumerate(images):
            labels = None if regions is None else np.asarray(regions[1][index])[None]
            result = engine(image[None], seed_labels=labels)
            # Resolved here for its refusals: inside the compiled maps the sizes are tensors.
            heatmap_sigma(settings, result.geometry, height, width)
            drawn = draw(result, labels, height, width).numpy()
            out.append(drawn[0][list(classes)])
        return np.stack(out).astype(np.float32)

    return maps


def _baseline_maps(name):
    def maps(graph, images, classes, regions=None, seed=0, options=None):
        """`baselines.explain`, one image at a time."""
        from tf_segunravel import baselines

        options = options or MethodOptions()
        layer = (
            options.gradcam_layer if name in ("gradcam", "gradcam_plus_plus", "scorecam") else None
        )
        out = []
        for index, image in enumerate(np.asarray(images)):
            own = None if regions is None else (regions[0][index], regions[1][index])
            out.append(
                baselines.explain(name, graph, image, classes, layer=layer, seed=seed, regions=own)
            )
        return np.stack(out).astype(np.float32)

    return maps


BUILT_IN = [
    Method("fixations", _fixation_maps(contrast=None), fixations=True),
    Method("fixations_contrastive", _fixation_maps(contrast=RUNNER_UP), fixations=True),
    # The variants of the faithfulness study (docs/results.md): denser walks, heat maps that
    # rank every pixel or take their blur from the score grid's stride, and path weights.
    Method("fixations_k3", _fixation_maps(contrast=None, k=3), fixations=True),
    Method("fixations_mass", _fixation_maps(contrast=None, mass=0.5), fixations=True),
    Method("fixations_full_shift", _fixation_maps(contrast=None, shift="full"), fixations=True),
    Method("fixations_density", _fixation_maps(contrast=None, ranking="density"), fixations=True),
    Method("fixations_segment", _fixation_maps(contrast=None, ranking="segment"), fixations=True),
    Method(
        "fixations_stride_kernel",
        _fixation_maps(contrast=None, sigma_unit="score_cells", sigma=STRIDE_KERNEL_CELLS),
        fixations=True,
    ),
    # Points that carry their paths' contribution shares instead of counts (K = 1, K = 3).
    Method(
        "fixations_weighted",
        _fixation_maps(contrast=None, path_weight="contribution"),
        fixations=True,
    ),
    Method(
        "fixations_k3_weighted",
        _fixation_maps(contrast=None, k=3, path_weight="contribution"),
        fixations=True,
    ),
    # Compiled for every class at once: one forward and one backward pass per image.
    Method("gradcam", _baseline_maps("gradcam"), None, Cost(1, 1, "image")),
    Method("gradcam_plus_plus", _baseline_maps("gradcam_plus_plus"), "baselines", Cost(1, 1)),
    # One forward pass per channel of its layer, every class read from the same passes.
    Method("scorecam", _baseline_maps("scorecam"), None, Cost(1, 0, "channel")),
    Method("saliency", _baseline_maps("saliency"), "baselines", Cost(1, 1)),
    # baselines.SMOOTH_SAMPLES noisy copies (tests/test_methods.py checks they agree).
    Method("smoothgrad", _baseline_maps("smoothgrad"), "baselines", Cost(20, 20)),
    Method("gradient_x_input", _baseline_maps("gradient_x_input"), None, Cost(1, 1)),
    Method("random", _baseline_maps("random"), None, Cost(0, 0, "image"), reads_weights=False),
    # The priors read the regions only (the network's prediction unless regions are given).
    Method("segment_prior", _baseline_maps("segment_prior"), None, reads_weights=False),
    Method("distance_prior", _baseline_maps("distance_prior"), None, reads_weights=False),
]
_table: dict[str, Method] = {method.name: method for method in BUILT_IN}


class Registration(contextlib.AbstractContextManager):
    """A method added by `register_method`: `remove()` restores the table as it was (the
    entry it replaced, if any); so does leaving a `with` block."""

    def __init__(self, method: Method, replaced: Method | None):
        self._method, self._replaced = method, replaced

    def remove(self) -> None:
        if _table.get(self._method.name) is not self._method:
            return  # undone already, or replaced since
        if self._replaced is None:
            del _table[self._method.name]
        else:
            _table[self._method.name] = self._replaced

    def __exit__(self, *exc_info):
        self.remove()
        return False


def register_method(method: Method, *, replace: bool = False) -> Registration:
    """Adds `method` to the table (at its end); an existing name is refused unless
    `replace`. Returns a `Registration` that undoes it."""
    if not isinstance(method, Method) or not callable(method.maps):
        raise TypeError(f"register_method takes a Method with a callable maps, got {method!r}")
    replaced = _table.get(method.name)
    if replaced is not None and not replace:
        raise ValueError(f"method {method.name!r} exists; pass replace=True to replace it")
    _table[method.name] = method
    return Registration(method, replaced)


def names(*, fixations: bool | None = None) -> list[str]:
    """Every method's name, in table order; with `fixations`, only the fixation methods
    (True) or only the others (False)."""
    return [n for n, m in _table.items() if fixations is None or m.fixations == fixations]


def get(name: str) -> Method:
    """The method called `name`, or an InputError listing the choices."""
    if name not in _table:
        raise InputError(f"methods: unknown [{name!r}]; choose from {names()}")
    return _table[name]


def check(chosen: typing.Iterable[str], flag: str = "methods") -> list[str]:
    """The names, checked: an unknown one, or one whose extra is missing, is an InputError
    naming it and `flag` (the option that listed them)."""
    chosen = list(chosen)
    unknown = [name for name in chosen if name not in _table]
    if unknown:
        raise InputError(f"{flag}: unknown {unknown}; choose from {names()}")
    missing = [name for name in chosen if not _table[name].available()]
    if missing:
        from tf_segunravel.baselines import INSTALL_HINT

        raise InputError(f"{flag}: {', '.join(missing)} {INSTALL_HINT}")
    return chosen
