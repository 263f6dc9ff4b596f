"""The shipped flagfiles, and `--flagfile=` paths that find them wherever the package is.

The experiments' flagfiles live in the checkout's `flags/` and name each other as
`--flagfile=flags/<name>.cfg`. A wheel carries the same files inside the package
(`tf_segunravel/flags/`, see setup.py), so `--flagfile=flags/shapes_demo.cfg` works from a
checkout, from any other directory, and from a non-editable install.

absl opens a flagfile, and every `--flagfile=` line nested in it, relative to the working
directory only; `expand` is the small hand-written reader that also looks beside the
including file and in the shipped copies. It keeps absl's format: one flag per line, blank
lines and lines starting with `#` or `//` skipped, later flags winning.
"""

import os

from tf_segunravel.errors import InputError

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_FLAGFILE_PREFIXES = ("--flagfile=", "-flagfile=")
_MAX_DEPTH = 32  # deeper nesting is a cycle


def flags_root() -> str:
    """The directory that the shipped flagfiles' `flags/...` paths are relative to: the
    installed package when it carries them, else the source checkout."""
    if os.path.isdir(os.path.join(PACKAGE_DIR, "flags")):
        return PACKAGE_DIR
    return os.path.dirname(PACKAGE_DIR)


def flags_dir() -> str:
    """The directory of the shipped flagfiles."""
    return os.path.join(flags_root(), "flags")


def resolve(path: str, including: str | None = None) -> str:
    """The flagfile `path` names: as given (relative to the working directory), then, for a
    relative path, relative to the root of the file that includes it (the parent of its
    directory), then among the shipped flagfiles. Raises InputError naming `path`."""
    candidates = [path]
    if not os.path.isabs(path):
        if including is not None:
            candidates.insert(0, os.path.join(os.path.dirname(os.path.dirname(including)), path))
        candidates.append(os.path.join(flags_root(), path))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    where = f" (in {including})" if including else ""
    raise InputError(f"--flagfile={path}{where}: no such flagfile")


def read(path: str, including: str | None = None, depth: int = 0) -> list[str]:
    """The flags of the flagfile `path` with nested flagfiles expanded in place."""
    if depth > _MAX_DEPTH:
        raise InputError(f"--flagfile={path}: nested more than {_MAX_DEPTH} deep (a cycle?)")
    resolved = resolve(path, including)
    with open(resolved, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    result = []
    for line in lines:
        if not line or line.startswith(("#", "//")):
            continue
        nested = _flagfile_value(line)
        if nested is not None:
            result.extend(read(nested, resolved, depth + 1))
        else:
            result.append(line)
    return result


def _flagfile_value(argument):
    for prefix in _FLAGFILE_PREFIXES:
        if argument.startswith(prefix):
            return argument[len(prefix) :]
    return None


def expand(argv: list[str]) -> list[str]:
    """`argv` with every `--flagfile=PATH` (or `--flagfile PATH`) replaced by the flags it
    holds, in place. Arguments after `--` are left alone."""
    result, index = [], 0
    while index < len(argv):
        argument = argv[index]
        if argument == "--":
            result.extend(argv[index:])
            break
        value = _flagfile_value(argument)
        if value is None and argument in ("--flagfile", "-flagfile") and index + 1 < len(argv):
            value = argv[index + 1]
            index += 1
        if value is None:
            result.append(argument)
        else:
            result.extend(read(value))
        index += 1
    return result
