"""The ONNX reader on mutated files: every one imports or ends in an `OnnxImportError`;
nothing crashes, hangs or raises anything else. Run in a subprocess with a time limit, so a
crash in protobuf or onnxruntime fails the test instead of the test run."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tests.helpers import REPO_ROOT  # noqa: E402

SECONDS = 120  # the fuzz loop's own budget; the subprocess gets twice that


def mutants(data: bytes, count: int, seed: int):
    """(kind, bytes): flipped bytes, truncations and a repeated span, seeded."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        buffer = bytearray(data)
        kind = ("flip", "truncate", "repeat")[i % 3]
        if kind == "flip":
            for position in rng.integers(0, len(buffer), int(rng.integers(1, 9))):
                buffer[position] = int(rng.integers(0, 256))
        elif kind == "truncate":
            del buffer[int(rng.integers(1, len(buffer))) :]
        else:
            start = int(rng.integers(0, len(buffer) - 8))
            span = buffer[start : start + int(rng.integers(1, 64))]
            buffer[start:start] = span
        yield kind, bytes(buffer)


def tally_imports(data, suffix, importer, refusal, folder, count, seed, seconds) -> dict:
    """Imports `count` mutants of `data` (saved in `folder` with `suffix`) by `importer`
    within `seconds`; returns the tally, and the mutants that raised anything but a one-line
    `refusal` naming the file. Both readers' fuzz tests run this loop."""
    tally: dict = {"imported": 0, "refused": 0, "tried": 0, "unclean": []}
    started = time.monotonic()
    for number, (kind, mutant) in enumerate(mutants(data, count, seed)):
        if time.monotonic() - started > seconds:
            break
        path = os.path.join(folder, f"mutant{number}{suffix}")
        with open(path, "wb") as f:
            f.write(mutant)
        tally["tried"] += 1
        try:
            importer(path)
            tally["imported"] += 1
        except refusal as e:
            assert str(e).startswith(path) and "\n" not in str(e), str(e)
            tally["refused"] += 1
        except Exception as e:  # what the test fails on
            tally["unclean"].append(f"{kind} #{number}: {type(e).__name__}: {e}"[:300])
        os.remove(path)
    return tally


def fuzz(folder: str, count: int, seed: int, seconds: float) -> dict:
    """`tally_imports` of the test segmenter's mutants by the ONNX importer."""
    from tests.importers.test_onnx_segmenters import segmenter
    from tf_segunravel.importers.onnx_model import OnnxImportError, import_onnx

    data = segmenter().SerializeToString()
    return tally_imports(data, ".onnx", import_onnx, OnnxImportError, folder, count, seed, seconds)


@pytest.mark.slow  # 400 mutants in a subprocess: about 10 s
def test_mutated_onnx_files_import_or_are_refused_cleanly(tmp_path):
    code = (
        "import json, sys; from tests.importers.test_onnx_fuzz import fuzz; "
        f"print(json.dumps(fuzz({str(tmp_path)!r}, 400, 0, {SECONDS})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=2 * SECONDS + 120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tally = json.loads(proc.stdout.strip().splitlines()[-1])
    assert tally["unclean"] == [], tally["unclean"]
    assert tally["tried"] >= 30 and tally["refused"] > 0, tally
