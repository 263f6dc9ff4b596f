"""Snapshots unravel results (points, counts, seeds, geometry, channel scores) of LargeFOV and
every zoo family at K=1 and K=3 full shift (LargeFOV also mass and contrast), to show that an
engine change leaves them bit-identical:

    git worktree add /tmp/before HEAD~1
    python3 bench/unravel_snapshot.py /tmp/before /tmp/before.npz
    python3 bench/unravel_snapshot.py . /tmp/after.npz
    python3 bench/unravel_snapshot.py --compare /tmp/before.npz /tmp/after.npz

The first argument is the source tree whose package is imported. About a minute on 2 cores.
"""

import sys

if sys.argv[1] == "--compare":
    import numpy as np

    a, b = np.load(sys.argv[2]), np.load(sys.argv[3])
    assert sorted(a.files) == sorted(b.files), set(a.files) ^ set(b.files)
    differ = [k for k in a.files if a[k].dtype != b[k].dtype or not np.array_equal(a[k], b[k])]
    print(f"arrays: {len(a.files)}")
    print(f"differing: {len(differ)} {differ[:10]}")
    sys.exit(1 if differ else 0)
sys.path.insert(0, sys.argv[1])  # the tree under test, before any of its modules load

import keras
import numpy as np
import tensorflow as tf

from tests.unravel.test_zoo import FAMILIES
from tf_segunravel.models import deeplab_largefov
from tf_segunravel.unravel import SegUnravel
from tf_segunravel.unravel.geometry import ScoreMap
from tf_segunravel.unravel.settings import PRESETS

out = {}


def dump(name, model, batch, channel_scores=True, **kw):
    # Points and counts as a plain engine computes them; the channel scores from an engine
    # that keeps them (it merges in another order, so its points are snapshotted too).
    r = SegUnravel(model, **kw).trace(tf.constant(batch)).numpy()
    out[name + "/points"] = r.points
    out[name + "/counts"] = r.counts
    out[name + "/geometry"] = r.geometry
    out[name + "/seeds"] = r.seeds
    if channel_scores:
        kept = SegUnravel(model, keep_channel_scores=True, **kw).trace(tf.constant(batch))
        kept = kept.numpy()
        out[name + "/kept/points"] = kept.points
        out[name + "/kept/counts"] = kept.counts
        for i, c in enumerate(kept.channel_scores or ()):
            out[f"{name}/cs{i}"] = c.scores


keras.utils.set_random_seed(0)
lf = deeplab_largefov(num_classes=5, width=0.125)
b = np.random.default_rng(0).uniform(0, 255, (2, 97, 81, 3)).astype(np.float32)
for tag, kw in {
    "k1": {},
    "k3full": dict(k=3, shift="full"),
    "mass": dict(mass=0.5),
    "contrast": dict(contrast="runner_up"),
    # Seg-Unravel's code: ties to the highest index, padded taps competing.
    **{f"code_k{k}": dict(PRESETS["seg_unravel_code"], k=k) for k in (1, 3)},
}.items():
    dump("largefov/" + tag, lf, b, **kw)
s, g = ScoreMap(lf)(b)
out["largefov/scoremap_geometry"] = g.numpy()
names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(FAMILIES)
for fam in names:
    build, side = FAMILIES[fam]
    keras.utils.set_random_seed(0)
    m = build(side)
    bb = np.random.default_rng(0).uniform(0, 255, (1, side, side, 3)).astype(np.float32)
    dump(fam + "/k1", m, bb)
    dump(fam + "/k3full", m, bb, channel_scores=False, k=3, shift="full")
    if fam in ("VGG16", "ResNet50", "U-Net"):
        dump(fam + "/contrast", m, bb, contrast="runner_up")
np.savez(sys.argv[2], **out)
print("saved", len(out))
