"""TrainConfig is the one definition of the training settings: flags, checks, flagfiles."""

import dataclasses
import json
import os
import re

import pytest
from absl import flags

from tf_segunravel import flag_settings
from tf_segunravel.errors import InputError
from tf_segunravel.flag_settings import Rule, setting
from tf_segunravel.training import loop
from tf_segunravel.training.config import FLAGS_DIR, TrainConfig, flagfile_config, run_fields


def fresh_flags(cls=TrainConfig):
    flag_values = flags.FlagValues()
    flag_settings.define_flags(cls, flag_values)
    return flag_values


def test_every_field_is_a_flag_with_its_default_and_help():
    flag_values = fresh_flags()
    for field in dataclasses.fields(TrainConfig):
        flag = flag_values[field.name]
        assert field.metadata["help"] and flag.help.endswith(field.metadata["help"])
        if field.default is not dataclasses.MISSING:
            assert flag.default == field.default, field.name
    assert flag_values["lr_policy"].flag_type() == "string enum"
    assert flag_values["mirror"].flag_type() == "bool"


def test_flags_round_trip_into_the_config():
    flag_values = fresh_flags()
    flag_values(["train", "--model_dir=m", "--steps=40", "--checkpoint_every=20", "--nomirror"])
    config = flag_settings.from_flags(TrainConfig, flag_values)
    assert (config.model_dir, config.steps, config.mirror) == ("m", 40, False)
    assert config.base_lr == TrainConfig(model_dir="m").base_lr


@pytest.mark.parametrize(
    "argument, message",
    [
        ("--width=0", "--width must be > 0"),
        ("--dropout=1", "--dropout must be in [0, 1)"),
        ("--steps=10", "--steps must be a multiple of --checkpoint_every"),
        ("--scale_min=2", "--scale_min must not exceed --scale_max"),
        ("--init=model", "--init_path is required"),
        ("--warmup_steps=-1", "--warmup_steps must be >= 0"),
        ("--warmup_steps=6000", "--warmup_steps must be smaller than --steps"),
    ],
)
def test_flag_checks_come_from_the_fields(argument, message):
    flag_values = fresh_flags()
    with pytest.raises(flags.IllegalFlagValueError, match=re.escape(message)):
        flag_values(["train", "--model_dir=m", "--checkpoint_every=4", argument])


@pytest.mark.parametrize(
    "values, message",
    [
        ({"width": 0}, "width must be > 0"),
        ({"steps": 10, "checkpoint_every": 4}, "steps must be a multiple of checkpoint_every"),
        ({"similarity": "dot"}, "similarity must be one of"),
        ({"model_dir": ""}, "model_dir is required"),
    ],
)
def test_the_python_api_checks_the_same_way(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"model_dir": "m", **values})


def test_a_new_setting_is_one_line():
    """The machinery every settings class uses: a field is its flag, check and flagfile key."""

    @dataclasses.dataclass
    class Toy:
        size: int = setting(3, "A size.", check=lambda v: v > 0, requirement="must be > 0")
        mode: str = setting("a", "A mode.", choices=("a", "b"))
        RULES = (Rule(("size", "mode"), lambda t: t.mode == "a" or t.size > 2, "size too small"),)

        def __post_init__(self):
            flag_settings.validate(self)

    flag_values = fresh_flags(Toy)
    flag_values(["toy", "--size=5", "--mode=b"])
    assert flag_settings.from_flags(Toy, flag_values) == Toy(5, "b")
    with pytest.raises(ValueError, match="size must be > 0"):
        Toy(size=0)
    with pytest.raises(ValueError, match="size too small"):
        Toy(size=1, mode="b")


def test_flagfiles_parse_through_absl(tmp_path):
    (tmp_path / "flags").mkdir()
    (tmp_path / "flags" / "base.cfg").write_text("# a comment\n--steps=40\n--checkpoint_every=20\n")
    (tmp_path / "flags" / "arm.cfg").write_text("--flagfile=flags/base.cfg\n--template_weight=2\n")
    config = flag_settings.from_flagfile(TrainConfig, tmp_path / "flags" / "arm.cfg", model_dir="m")
    assert (config.steps, config.template_weight, config.model_dir) == (40, 2.0, "m")
    (tmp_path / "flags" / "bad.cfg").write_text("--steps=many\n")
    with pytest.raises(flags.Error):
        flag_settings.from_flagfile(TrainConfig, tmp_path / "flags" / "bad.cfg", model_dir="m")


@pytest.mark.parametrize("name", sorted(os.listdir(FLAGS_DIR)))
def test_every_shipped_flagfile_gives_a_valid_config(name):
    # Parsed through absl and checked by TrainConfig's rules (an inherited --warmup_steps
    # longer than a fine-tuning file's --steps, say, fails here). The fine-tuning files leave
    # --init_path to the command line.
    config = flagfile_config(name, model_dir="m", init_path="runs/base")
    assert config.model_dir == "m"


def test_resumable_fields_are_only_the_ones_that_do_not_change_the_run():
    assert set(run_fields()) == {f.name for f in dataclasses.fields(TrainConfig)} - {
        "verbose",
        "allow_config_change",
    }


def written(tmp_path, **values):
    config = TrainConfig(model_dir=str(tmp_path), num_classes=6, **values)
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    return config


def test_resuming_with_other_settings_is_refused_naming_them(tmp_path):
    written(tmp_path, steps=1000, seed=0)
    before = (tmp_path / "config.json").read_text()
    again = TrainConfig(model_dir=str(tmp_path), num_classes=6, steps=2000, seed=1, verbose=0)
    with pytest.raises(InputError) as error:
        loop._check_resume(again)
    message = str(error.value)
    assert "seed=0 (now 1)" in message and "steps=1000 (now 2000)" in message
    assert "allow_config_change=True" in message and "verbose" not in message
    assert (tmp_path / "config.json").read_text() == before
    # Only watching settings changed: resumes silently.
    same = TrainConfig(model_dir=str(tmp_path), num_classes=6, steps=1000, verbose=0)
    assert loop._check_resume(same) is None


def test_allowed_changes_are_recorded(tmp_path):
    written(tmp_path, steps=1000)
    record = loop._check_resume(
        TrainConfig(model_dir=str(tmp_path), num_classes=6, steps=2000, allow_config_change=True)
    )
    assert record["changes"] == {"steps": {"before": 1000, "now": 2000}}
    # `train` appends it to config_changes.jsonl once the run has started (test_train.py).


def test_network_changes_are_refused_even_when_allowed(tmp_path):
    written(tmp_path, width=0.5)
    with pytest.raises(InputError, match=r"width=0.5 \(now 1.0\); use another model_dir=<dir>$"):
        loop._check_resume(
            TrainConfig(model_dir=str(tmp_path), num_classes=6, allow_config_change=True)
        )


@pytest.mark.parametrize(
    "tool, flag",
    [("train", "--steps"), ("fixations", "--outlier_radius"), ("evaluate", "--crf_iterations")],
)
def test_generated_flags_are_listed_in_the_tools_short_help(tool, flag):
    """Generated flags are declared by tf_segunravel.flag_settings; each tool adopts them, so
    `--helpshort` lists them beside its own."""
    from tests.helpers import run_tool

    proc = run_tool(tool, "--helpshort", timeout=120)
    assert f"  {flag}:" in proc.stdout + proc.stderr


def test_shipped_flagfiles_are_found_from_any_directory(tmp_path, monkeypatch):
    from tf_segunravel import flagfiles

    monkeypatch.chdir(tmp_path)  # no flags/ here: the shipped copies are read
    lines = flagfiles.read("flags/shapes_demo.cfg")
    assert "--width=0.125" in lines and "--crop_size=129" in lines  # nested files expanded
    assert lines[-1] == "--width=0.0625" and "--steps=4000" in lines
    (tmp_path / "loop.cfg").write_text("--flagfile=loop.cfg\n")
    with pytest.raises(InputError, match="nested more than"):
        flagfiles.read("loop.cfg")
    with pytest.raises(InputError, match=r"^--flagfile=flags/none.cfg: no such flagfile$"):
        flagfiles.expand(["--steps=2", "--flagfile", "flags/none.cfg"])


@pytest.mark.parametrize(
    "name",
    sorted(n for n in os.listdir(FLAGS_DIR) if n.startswith("voc_")),
)
def test_voc_flagfiles_train_as_their_headers_say(name):
    """DeepLab v1 and the author's port crop 321 and mirror, with no random scaling; every
    VOC flagfile says so in its header and does so in its flags."""
    config = flagfile_config(name, FLAGS_DIR, model_dir="m")
    assert (config.crop_size, config.scale_min, config.scale_max) == (321, 1.0, 1.0)
    assert config.mirror
    with open(os.path.join(FLAGS_DIR, name)) as f:
        header = f.read().split("\n--", 1)[0]
    assert "mirroring" in header and "scaling" in header
