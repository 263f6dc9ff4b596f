"""Installs tf-segunravel: DeepLab-LargeFOV, template-similarity loss, segmentation unravel.

The checkout's `tools/` and `flags/` install inside the package (`tf_segunravel.tools`,
`tf_segunravel/flags/`), so the console commands and `--flagfile=flags/...` work from any
directory and without a checkout (`tf_segunravel/flagfiles.py`).
"""

from setuptools import find_packages, setup

TOOLS = [
    "convert_caffe",
    "convert_model",
    "demo",
    "evaluate",
    "experiments",
    "export",
    "fixations",
    "train",
]

setup(
    name="tf-segunravel",
    version="0.1.0",
    description=(
        "DeepLab-LargeFOV in Keras 3 with the per-pixel template-similarity loss and "
        "segmentation fixations (Seg-Unravel)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        *find_packages(include=["tf_segunravel", "tf_segunravel.*"]),
        "tf_segunravel.tools",
        "tf_segunravel.flags",
    ],
    package_dir={"tf_segunravel.tools": "tools", "tf_segunravel.flags": "flags"},
    package_data={"tf_segunravel.flags": ["*.cfg"]},
    entry_points={
        "console_scripts": [
            f"segunravel-{name.replace('_', '-')}=tf_segunravel.tools.{name}:run" for name in TOOLS
        ]
    },
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.0",
        "tensorflow-datasets>=4.9",
        "numpy",
        "pillow",
        "absl-py",
        "matplotlib",
        "h5py",
        "protobuf",
        # TensorFlow 2.21 no longer pulls it in; the training logs need it.
        "tensorboard",
        # tensorflow-datasets 4.9 imports it to prepare datasets but does not declare it.
        "importlib_resources",
        "scipy",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-xdist>=3",
            "ruff>=0.4",
            "mypy>=1.10",
            "import-linter>=2.1",
            # A trained network shipped inside a wheel (PP-OCRv4's text detector, ONNX), for
            # tests/importers/test_wheel_networks.py; the tests read its file, never import it.
            "rapidocr-onnxruntime==1.4.4",
            # keras-hub's SegFormer, traced by tests/unravel/test_segformer.py.
            "keras-hub>=0.32",
        ],
        # DeepLab's dense CRF (tf_segunravel/crf.py); built from source, needs a C++ compiler.
        "crf": ["pydensecrf2>=1.1"],
        # Gradient baselines beside the fixations (tf_segunravel/baselines.py).
        "baselines": ["tf-keras-vis==0.8.7"],
        # ONNX models (tf_segunravel/importers/onnx_model.py): the parser and the runtime
        # every import is checked against.
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18"],
        # TFLite models (tf_segunravel/importers/tflite_model.py): LiteRT reads the file's
        # schema and is the runtime every import is checked against.
        "tflite": ["ai-edge-litert>=2.0"],
        # keras-hub's transformers (SegFormer), whose layers the unravel traces
        # (tf_segunravel/unravel/rules/segformer.py); the rules import nothing from it.
        "keras-hub": ["keras-hub>=0.32"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
