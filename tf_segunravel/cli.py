"""What every absl binary in `tools/` shares: quiet TensorFlow logs and one-line input errors."""

import glob
import os
import re
import sys
import typing
from collections.abc import Callable, Sequence

# Set before TensorFlow is imported anywhere, so its C++ start-up chatter stays out of the
# one-line errors and progress output users read.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging

from tf_segunravel import flag_settings, flagfiles
from tf_segunravel.atomic import check_output_dir
from tf_segunravel.errors import InputError

if typing.TYPE_CHECKING:
    from tf_segunravel.loading import LoadedModel
    from tf_segunravel.unravel.settings import FixationSettings, InputSettings


def run(main: Callable[[list[str]], typing.Any]) -> None:
    """`absl.app.run(main)`, turning an `InputError` into `<tool>: error: <message>`, exit 1.

    Tools take flags only: positional arguments are an error too.
    """

    def guarded(argv):
        try:
            if len(argv) > 1:
                raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
            if not flags.FLAGS["verbosity"].present:
                # TFDS and SavedModel writing log every file at INFO; --verbosity=0 shows it.
                logging.set_verbosity(logging.WARNING)
            return main(argv)
        except InputError as e:
            _fail(e)
        except Exception as e:  # a refusal only known once the graph runs (see below)
            refusal = graph_refusal(e)
            if refusal is None:
                raise
            _fail(refusal)

    def parse(argv):
        # absl reports a bad flag on two lines ("FATAL Flags parsing error: ..." and a hint);
        # every tool error is one line instead.
        # Flagfiles are expanded here rather than by absl so that `--flagfile=flags/...`
        # also finds the shipped flagfiles outside a checkout (tf_segunravel/flagfiles.py).
        try:
            return flags.FLAGS([argv[0], *flagfiles.expand(argv[1:])])
        except (flags.Error, InputError) as e:
            _fail(e)

    app.run(guarded, flags_parser=parse)


# Library errors name parameters (`crop_size=7: ...`, `pass overwrite=True`); a tool's
# message names its flags instead: `name=` becomes `--name=` for every flag the tool has.
_PARAMETER = re.compile(r"(?<![\w-])([a-z][a-z0-9_]*)(?==)|^([a-z][a-z0-9_]*)(?=:)")


def flag_message(message: str, flag_values: flags.FlagValues = flags.FLAGS) -> str:
    """`message` with each `name=` (and a leading `name:`) that names a flag of
    `flag_values` written as the flag, `--name=`."""

    def as_flag(match):
        name = match.group(1) or match.group(2)
        return f"--{name}" if name in flag_values else name

    return _PARAMETER.sub(as_flag, str(message))


def graph_refusal(error: Exception) -> str | None:
    """The unravel's refusal inside a TensorFlow run-time error, as one line, or None.

    Some refusals depend on values a traced graph computes (tokens that are not their grid's,
    a SegFormer layer whose recomputation differs), so they arrive as an
    InvalidArgumentError whose message buries ours among the graph's call sites."""
    if type(error).__name__ != "InvalidArgumentError":
        return None
    found = re.search(r"\[(unravel cannot trace [^\]]*)\]", str(error))
    return found.group(1).replace("\\'", "'") if found else None


def _fail(error):
    tool = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    print(f"{tool}: error: {flag_message(error)}", file=sys.stderr)
    sys.exit(1)


def check_writable(path: str, flag: str) -> None:
    """Raises InputError unless a file can be written at `path` (given as --`flag`). Creates
    nothing (the atomic writers make the directory when they write), and is called before
    long work, so an impossible output fails at once and a failed run leaves nothing."""
    directory = os.path.dirname(os.path.abspath(path))
    check_output_dir(directory, flag, shown=path)
    if os.path.isdir(path):
        raise InputError(f"--{flag}={path}: is a directory")
    existing = directory
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK):
        raise InputError(f"--{flag}={path}: {existing} is not writable")


def check_path_flags(
    inputs: Sequence[str] = (),
    input_dirs: Sequence[str] = (),
    input_patterns: Sequence[str] = (),
    output_dirs: Sequence[str] = (),
    output_files: Sequence[str] = (),
    flag_values: flags.FlagValues = flags.FLAGS,
) -> None:
    """Checks path flags as absl parses them, before any TensorFlow import: a missing input
    or an impossible output is reported in a fraction of a second, not after a model loads.

    inputs: flags naming a file or directory that must exist; input_dirs: a directory;
    input_patterns: list flags of files, globs or directories, each of which must exist or
    match; output_dirs: directories the tool will create (`atomic.check_output_dir`);
    output_files: files it will write (`check_writable`). The tools' own checks stay in
    place for library callers; these only make them early. `flag_values`: where the flags
    are defined (absl's global FLAGS by default).
    """

    def register(name, check):
        def validator(value):
            if value is None:
                return True
            try:
                check(value)
            except InputError as e:
                # absl prefixes "flag --name=value: "; drop the same prefix of our own, in
                # flag or in parameter form (matched whole: the value itself may hold ": ").
                message = str(e).removeprefix(f"--{name}={value}: ")
                message = message.removeprefix(f"{name}={value}: ")
                raise flags.ValidationError(message) from e
            return True

        flags.register_validator(name, validator, flag_values=flag_values)

    def existing(kind, test):
        def check(path):
            if not test(path):
                raise InputError(f"no such {kind}")

        return check

    def patterns(specs):
        for spec in specs:
            if any(ch in spec for ch in "*?["):
                if not glob.glob(spec):
                    raise InputError(f"{spec}: matches no file")
            elif not os.path.exists(spec):
                raise InputError(f"{spec}: no such file or directory")

    for name in inputs:
        register(name, existing("file or directory", os.path.exists))
    for name in input_dirs:
        register(name, existing("directory", os.path.isdir))
    for name in input_patterns:
        register(name, patterns)
    for name in output_dirs:
        register(name, lambda path, name=name: check_output_dir(path, name))
    for name in output_files:
        register(name, lambda path, name=name: check_writable(path, name))


def define_fixation_flags(defaults: dict[str, typing.Any] | None = None) -> None:
    """The flags of every `FixationSettings` field (unravel and heat maps), shared by
    tools/fixations.py, tools/export.py and tools/experiments.py."""
    from tf_segunravel.unravel.settings import PRESETS, FixationSettings

    flag_settings.define_flags(FixationSettings, defaults=defaults)
    flags.DEFINE_enum(
        "preset",
        None,
        list(PRESETS),
        "A named set of the fields above (seg_unravel_code: as Seg-Unravel's released code "
        "traces, docs/method.md); flags given on the command line still replace single fields.",
    )


def fixation_settings(
    class_names: Sequence[str] | None = None, num_classes: int | None = None
) -> "FixationSettings":
    """The `FixationSettings` the parsed flags describe, with a --contrast class name turned
    into its id (looked up in `class_names`) and checked against `num_classes`."""
    import dataclasses

    from tf_segunravel.unravel.settings import PRESETS, FixationSettings

    parsed = flag_settings.from_flags(FixationSettings)
    if flags.FLAGS.preset is not None:
        # The preset replaces the binary's defaults, never a flag the user gave.
        preset: dict[str, typing.Any] = {
            name: value
            for name, value in PRESETS[flags.FLAGS.preset].items()
            if not flags.FLAGS[name].present
        }
        parsed = dataclasses.replace(parsed, **preset)
    try:
        contrast = parsed.contrast_class(class_names, num_classes)
    except ValueError as e:
        raise InputError(f"--contrast={parsed.contrast}: {e}") from e
    if isinstance(contrast, int):
        parsed = dataclasses.replace(parsed, contrast=str(contrast))
    return parsed


def fixation_flag_given(name: str) -> str | None:
    """How the command line set FixationSettings field `name`: "--name=value" for a flag
    given, "--preset=<name>" for a field the preset set, None where the default stands."""
    from tf_segunravel.unravel.settings import PRESETS

    if flags.FLAGS[name].present:
        return f"--{name}={flags.FLAGS[name].value}"
    preset = flags.FLAGS.preset
    if preset is not None and name in PRESETS[preset]:
        return f"--preset={preset}"
    return None


def define_model_flags() -> None:
    """How the tools read a model: `--input_scale`, `--input_mean`, `--input_channels` (the
    `InputSettings` fields) and `--output`, shared by tools/fixations.py, tools/export.py and
    tools/experiments.py."""
    from tf_segunravel.unravel.settings import InputSettings

    flag_settings.define_flags(InputSettings, prefix="input_")
    define_input_size_flag()
    flags.DEFINE_string(
        "output",
        None,
        "The score output of a model with several: an output's name, or the name of a layer "
        "inside the model whose output holds the per-pixel scores.",
    )


def define_input_size_flag() -> None:
    """`--input_size=HEIGHT,WIDTH`, the size an ONNX model with a dynamic height and width is
    built for (`input_size_flag()` reads it)."""
    flags.DEFINE_list(
        "input_size",
        None,
        "Input: HEIGHT,WIDTH to build an ONNX model with a dynamic height and width for "
        "(default: the ONNX input's own size).",
    )
    flags.register_validator(
        "input_size",
        lambda v: v is None or (len(v) == 2 and all(s.isdigit() and int(s) > 0 for s in v)),
        "--input_size must be two positive integers, HEIGHT,WIDTH",
    )


def input_size_flag() -> list[int] | None:
    """The parsed --input_size as [height, width], or None."""
    size = flags.FLAGS.input_size
    return None if size is None else [int(v) for v in size]


def input_settings() -> "InputSettings":
    """The `InputSettings` the parsed --input_* flags describe."""
    from tf_segunravel.unravel.settings import InputSettings

    return flag_settings.from_flags(InputSettings, prefix="input_")


def load_model(path: str | None = None, flag: str = "model") -> "LoadedModel":
    """The model at `path` (default: the --`flag` flag's value) as `loading.load_model`
    reads it, fed and read as the parsed --input_* and --output flags say; a model the
    unravel's graph cannot read is an InputError naming the flag."""
    from tf_segunravel.loading import load_model as load

    path = flags.FLAGS[flag].value if path is None else path
    assert path is not None  # the tools mark --model required
    try:
        return load(
            path,
            input=input_settings(),
            output=flags.FLAGS.output,
            input_size=input_size_flag(),
        )
    except InputError:
        raise
    except ValueError as e:
        raise InputError(f"--{flag}={path}: {flag_message(str(e))}") from e
