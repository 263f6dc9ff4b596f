"""Package names that load on first use (PEP 562).

`tf_segunravel.training` and `tf_segunravel.unravel` export names whose modules import
TensorFlow. The tools import the packages' light modules (`training.config`,
`unravel.settings`) to define and check their flags; with eager `__init__` imports a bad flag
would be reported only after TensorFlow's import of several seconds.
"""

import importlib
import typing
from collections.abc import Callable


def lazy_exports(
    package: str, homes: dict[str, str]
) -> tuple[Callable[[str], typing.Any], Callable[[], list[str]], list[str]]:
    """(`__getattr__`, `__dir__`, `__all__`) for `package` (its `__name__`), where `homes`
    maps each exported name to the submodule that defines it."""

    def __getattr__(name):
        if name in homes:
            return getattr(importlib.import_module(f"{package}.{homes[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(homes)

    return __getattr__, __dir__, sorted(homes)
