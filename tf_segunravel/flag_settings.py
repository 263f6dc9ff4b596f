"""Settings dataclasses that define their own flags and checks.

A settings class is a dataclass whose fields are declared with `setting(...)`: the default,
the help text, the allowed choices and a check live on the field. From that one definition

- the class validates itself on construction (`ValueError` naming every bad field),
- `define_flags(cls)` declares one absl flag per field, with the same checks as validators,
- `from_flags(cls)` builds an instance from parsed flags, and
- `from_flagfile(cls, path)` parses a flagfile through absl into an instance,

so adding a setting is one `setting(...)` line: the Python API, the binaries' flags, their
validation and the flagfiles all follow. Cross-field rules go in the class's `RULES`, a tuple
of `Rule(fields, test, message)`; `test` receives the settings as attributes.

absl has no dataclass integration and `ml_collections`' config_flags is not a dependency;
these few functions are the glue.
"""

import dataclasses
import functools
import numbers
import os
import types
import typing
from collections.abc import Callable

from absl import flags

_MISSING = dataclasses.MISSING
T = typing.TypeVar("T")


class Rule(typing.NamedTuple):
    """A check over several fields; `message` reads as a sentence with the names in it."""

    fields: tuple
    test: typing.Callable
    message: str


# Checks the settings classes share (value -> bool, never called with None).
def positive(value: float) -> bool:
    return value > 0


def non_negative(value: float) -> bool:
    return value >= 0


def at_least_one(value: float) -> bool:
    return value >= 1


def fraction(value: float) -> bool:
    """In [0, 1)."""
    return 0 <= value < 1


def positive_integer(value: typing.Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1


def setting(
    default: typing.Any = _MISSING,
    help: str = "",
    *,
    choices: typing.Iterable[str] | None = None,
    check: Callable[[typing.Any], bool] | None = None,
    requirement: str = "",
    parse: Callable[[list[str]], typing.Any] | None = None,
    **extra: typing.Any,
) -> typing.Any:
    """A dataclass field that carries its flag help, choices and check.

    Args:
      default: the default value (omit it for a required setting).
      help: the flag's help text.
      choices: the allowed values of a string setting (the flag becomes an enum).
      check: value -> bool, for values other than None.
      requirement: how a failed check reads, "must be > 0".
      parse: for a tuple setting (a comma-separated list flag), the function from the flag's
        list of strings to the field's value; a ValueError from it fails the check.
      **extra: more metadata for the settings class's own use.
    """
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices else None,
        "check": check,
        "requirement": requirement,
        "parse": parse,
        **extra,
    }
    return dataclasses.field(default=default, metadata=metadata)


def problems(settings: typing.Any) -> list[str]:
    """The broken checks of a settings instance, as "<field> <requirement>" strings."""
    found = []
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        meta = field.metadata
        if value is None:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            found.append(f"{field.name} must be one of {list(meta['choices'])}, got {value!r}")
        elif meta.get("check") and not meta["check"](value):
            found.append(f"{field.name} {meta['requirement']}, got {value!r}")
    for rule in getattr(type(settings), "RULES", ()):
        if not rule.test(settings):
            found.append(rule.message)
    return found


def validate(settings: typing.Any) -> None:
    """Raises ValueError listing every broken check (called by `__post_init__`)."""
    found = problems(settings)
    if found:
        raise ValueError("; ".join(found))


def _base_type(annotation):
    """`int | None` -> int; plain types unchanged."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def define_flags(
    cls: type,
    flag_values: flags.FlagValues = flags.FLAGS,
    exclude: typing.Collection[str] = (),
    defaults: dict[str, typing.Any] | None = None,
    prefix: str = "",
    rules: bool = True,
    helps: dict[str, str] | None = None,
) -> None:
    """Declares one flag per field of `cls` (bar `exclude`), with the fields' checks.

    `defaults` {field: value} gives a binary its own defaults for some fields, and `helps`
    {field: text} its own help text (one that names what only the binary can list); `prefix` is
    put before every flag name (`crf_` makes `bilateral_weight` `--crf_bilateral_weight`).
    `rules=False` leaves the cross-field `RULES` to the instance (checked on construction).
    """
    defaults = defaults or {}
    helps = helps or {}
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        meta = {**field.metadata, "help": helps.get(field.name, field.metadata.get("help", ""))}
        name = prefix + field.name
        default = None if field.default is _MISSING else field.default
        default = defaults.get(field.name, default)
        kind = _base_type(field.type)
        args = (name, default, meta.get("help", ""))
        if kind is bool:
            flags.DEFINE_boolean(*args, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(*args, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(*args, flag_values=flag_values)
        elif kind is str and meta.get("choices"):
            flags.DEFINE_enum(
                name,
                default,
                list(meta["choices"]),
                meta.get("help", ""),
                flag_values=flag_values,
            )
        elif kind is str:
            flags.DEFINE_string(*args, flag_values=flag_values)
        elif kind is tuple and meta.get("parse"):
            shown = None if default is None else [_shown(v) for v in default]
            flags.DEFINE_list(name, shown, meta.get("help", ""), flag_values=flag_values)
        else:
            raise TypeError(f"{cls.__name__}.{field.name}: no flag type for {field.type}")
        if meta.get("check"):
            check = meta["check"]
            if meta.get("parse"):
                check = functools.partial(_parsed_check, meta["parse"], check)
            flags.register_validator(
                name,
                lambda value, check=check: value is None or check(value),
                f"--{name} {meta['requirement']}",
                flag_values=flag_values,
            )
    for rule in getattr(cls, "RULES", ()) if rules else ():
        if any(name in exclude for name in rule.fields):
            continue
        flags.register_multi_flags_validator(
            [prefix + name for name in rule.fields],
            lambda values, rule=rule: rule.test(
                types.SimpleNamespace(**{k[len(prefix) :]: v for k, v in values.items()})
            ),
            " ".join(
                f"--{prefix}{word}" if word in rule.fields else word
                for word in rule.message.split()
            ),
            flag_values=flag_values,
        )


def _shown(value: object) -> str:
    """A list flag's default item: numbers as `%g` (0.01, 1, 5), anything else as str."""
    return f"{value:g}" if isinstance(value, numbers.Number) else str(value)


def from_flags(
    cls: type[T],
    flag_values: flags.FlagValues = flags.FLAGS,
    prefix: str = "",
    **overrides: typing.Any,
) -> T:
    """An instance of `cls` from parsed flags (named with `prefix`); `overrides` win."""
    values = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]  # T is a dataclass
        if prefix + field.name in flag_values:
            value = flag_values[prefix + field.name].value
            parse = field.metadata.get("parse")
            values[field.name] = parse(value) if parse and value is not None else value
    return cls(**{**values, **overrides})


def _parsed_check(parse, check, value):
    try:
        return check(parse(value))
    except ValueError:
        return False


def from_flagfile(cls: type[T], path: str | os.PathLike, **overrides: typing.Any) -> T:
    """Parses the flagfile at `path` through absl into an instance of `cls`.

    Nested `--flagfile=` lines are relative to the parent of the flagfile's directory (the
    repository root for `flags/*.cfg`), or name shipped flagfiles (`flagfiles.resolve`).
    `overrides` win
    over the flagfile; the cross-field rules are checked after they apply (a flagfile may
    leave `init_path` to its caller).
    """
    from tf_segunravel import flagfiles

    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such flagfile")
    flag_values = flags.FlagValues()
    define_flags(cls, flag_values, rules=False)
    flag_values(["settings", *flagfiles.read(path)])
    return from_flags(cls, flag_values, **overrides)
