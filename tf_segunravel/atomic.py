"""Atomic file writes: every file the package writes appears whole or not at all."""

import json
import os
import typing
from collections.abc import Callable

from tf_segunravel.errors import InputError


def check_output_dir(path: str, flag: str = "output_dir", shown: str | None = None) -> None:
    """Raises a one-line `InputError` when a file stands where directory `path` (given as
    --`flag`) or one of its parents must go; creates nothing, so tools call it before long
    work."""
    shown = path if shown is None else shown
    blocker = os.path.abspath(path)
    while blocker and not os.path.exists(blocker):
        blocker = os.path.dirname(blocker)
    if blocker and not os.path.isdir(blocker):
        raise InputError(f"{flag}={shown}: {blocker} is a file, not a directory")


def make_output_dir(path: str, flag: str = "output_dir", shown: str | None = None) -> None:
    """Creates directory `path` (given as --`flag`=`shown`, default `path`) or raises a
    one-line `InputError` saying why it cannot be (a file in the way, no permission, ...)."""
    shown = path if shown is None else shown
    check_output_dir(path, flag, shown)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise InputError(f"{flag}={shown}: cannot create {path} ({e.strerror})") from e
    if not os.access(path, os.W_OK):
        raise InputError(f"{flag}={shown}: {path} is not writable")


def save_atomically(path: str, write: Callable[[str], typing.Any]) -> None:
    """Calls write(temporary path) for a hidden sibling of `path`, then moves it into place.

    The directory is made when missing. The temporary name keeps `path`'s suffixes
    (`.weights.h5`, `.keras`, `.npz` writers insist on them); a crash or an exception in
    `write` leaves `path` untouched.
    """
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".tmp-{os.getpid()}-{name}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(path: str, payload: typing.Any) -> None:
    """`payload` as indented JSON at `path`, atomically."""

    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(payload, f, indent=2)

    save_atomically(path, write)


def write_text(path: str, text: str) -> None:
    """`text` at `path`, atomically."""

    def write(temporary):
        with open(temporary, "w") as f:
            f.write(text)

    save_atomically(path, write)
