import json
import math
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import config
from engine.config import ConfigError


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_presets_load():
    from tests.helpers import ROOT

    # found from the repository, not the working directory, so that a run from elsewhere cannot pass on no presets
    presets = sorted((ROOT / "configs").glob("*.toml"))
    assert len(presets) >= 10, presets
    for p in presets:
        assert isinstance(config.load(p), config.RunConfig), p


def test_overrides_apply_and_are_typed(tmp_path):
    p = write(tmp_path, "[model]\nd_model = 64\n")
    cfg = config.load(p, ["model.d_model=128", "model.mixer=mlp", "train.max_minutes=1.5", "name=abc"])
    assert cfg.model.d_model == 128 and cfg.model.mixer == "mlp"
    assert cfg.train.max_minutes == 1.5 and cfg.name == "abc"


def test_roundtrip_through_toml(tmp_path):
    cfg = config.load(write(tmp_path, "[model]\nstep_loss_weights=[0.0, 0.5, 0.5, 1.0]\n"))
    again = config.load(write(tmp_path, config.to_toml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("text,needle", [
    ("[model]\nd_model = -1\n", "model.d_model"),
    ("[model]\nfoo = 1\n", "model.foo"),
    ("[modle]\nd_model = 1\n", "modle"),
    ("[model]\nd_model = 'big'\n", "model.d_model"),
    ("[model]\nexpansion = nan\n", "model.expansion"),
    ("[model]\nmixer = 'conv'\n", "model.mixer"),
    ("[task]\nsize = 5\n", "task.size"),
    ("name = ''\n", "name"),
    ("[train]\nbatch_size = 1e400\n", "train.batch_size"),
    ("[train]\nbatch_size = true\n", "train.batch_size"),
    ("[model]\nd_model = 130\nn_heads = 4\n", "model.d_model"),
    ("[model] d_model=", "TOML"),
    ("[model]\ncheckpointing = 'yes'\n", "model.checkpointing"),
    ("[train]\ndtype = 'half'\n", "train.dtype"),
])
def test_bad_values_name_the_key_and_file(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert needle in msg and str(p) in msg
    assert "\n" not in msg


def test_bad_override_names_the_key(tmp_path):
    p = write(tmp_path, "")
    with pytest.raises(ConfigError, match="model.nope"):
        config.load(p, ["model.nope=3"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        config.load(p, ["model.d_model"])


LEAVES = [k for k in config.RANGES]
VALUES = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5), st.booleans(), st.just(""), st.lists(st.integers(), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(LEAVES), value=VALUES)
def test_any_value_is_accepted_or_refused_with_a_sentence(tmp_path_factory, key, value):
    section, name = key.split(".")
    try:
        cfg = config.from_dict({section: {name: value}}, where="x.toml")
    except ConfigError as e:
        assert key in str(e)
        return
    got = getattr(getattr(cfg, section), name)
    assert not (isinstance(got, float) and not math.isfinite(got))
    lo, hi = config.RANGES[key]
    assert lo <= got <= hi


def test_task_names_and_keys_match_the_registry():
    import dataclasses
    from typing import get_args, get_type_hints

    from engine.tasks.registry import TASKS, task_params

    assert set(get_args(get_type_hints(config.TaskConfig)["name"])) == set(TASKS) == set(config.TASK_KEYS)
    fields = {f.name for f in dataclasses.fields(config.TaskConfig)}
    for name in TASKS:
        assert set(config.TASK_KEYS[name]) == set(task_params(name)) & fields, name


def test_a_task_key_the_task_does_not_take_is_refused_naming_what_it_takes(tmp_path):
    p = write(tmp_path, "[task]\nname = 'sudoku'\n")
    with pytest.raises(ConfigError) as e:
        config.load(p, ["task.side=13"])
    msg = str(e.value)
    assert msg.startswith("--set task.side:") and "'sudoku'" in msg and "size, difficulty, seed, augment" in msg
    assert "\n" not in msg
    p = write(tmp_path, "[task]\nname = 'modular'\nsize = 6\n")
    with pytest.raises(ConfigError, match=r"c\.toml: task 'modular' does not take task\.size; it takes: p, op,"):
        config.load(p)


def test_defaults_seed_and_difficulty_of_any_task_are_not_refused(tmp_path):
    cfg = config.load(write(tmp_path, "[task]\nname = 'modular'\nseed = 3\ndifficulty = 2\n"))
    assert (cfg.task.seed, cfg.task.difficulty, cfg.task.size, cfg.task.side) == (3, 2, 4, 11)
    cfg = config.load(write(tmp_path, "[task]\nname = 'maze'\nside = 9\n"), ["task.seed=1"])
    assert (cfg.task.side, cfg.task.seed) == (9, 1)


def test_switching_the_task_by_set_leaves_out_the_file_keys_only_its_task_took(tmp_path):
    p = write(tmp_path, "[task]\nname = 'sudoku'\nsize = 6\ndifficulty = 2\n")
    cfg = config.load(p, ["task.name=arithmetic"])
    assert (cfg.task.name, cfg.task.size, cfg.task.difficulty) == ("arithmetic", 4, 2)
    assert "size" not in tomllib.loads(config.to_toml(cfg))["task"]
    with pytest.raises(ConfigError, match="task 'arithmetic' does not take task.size"):
        config.load(p, ["task.name=arithmetic", "task.size=6"])
    for preset in ("configs/quickstart.toml", "configs/grokking.toml"):
        config.load(preset, ["task.name=maze"])


def test_a_sudoku_difficulty_may_be_a_mix_and_no_other_tasks(tmp_path):
    from engine.tasks.registry import task_from_config

    p = write(tmp_path, "[task]\nname = 'sudoku'\ndifficulty = [1, 2, 3]\n")
    cfg = config.load(p)
    assert cfg.task.difficulty == [1, 2, 3] and task_from_config(cfg.task).mix == (1, 2, 3)
    assert config.load(write(tmp_path, config.to_toml(cfg))) == cfg
    assert config.load(p, ["task.difficulty=3"]).task.difficulty == 3
    # switching the task by --set drops the file's mix with the other keys only sudoku takes
    assert config.load(p, ["task.name=arithmetic"]).task.difficulty == 1
    with pytest.raises(ConfigError, match=r"--set task.difficulty: .*out of range; allowed is 1 to 3"):
        config.load(p, ["task.difficulty=[1, 4]"])
    with pytest.raises(ConfigError, match="expected an integer or a list of integers"):
        config.load(p, ["task.difficulty=[]"])
    with pytest.raises(ConfigError, match="is a mix of difficulties, which task 'arithmetic' does not take"):
        config.load(p, ["task.name=arithmetic", "task.difficulty=[1, 2]"])
    with pytest.raises(ConfigError, match="is a mix of difficulties, which task 'maze' does not take"):
        config.load(write(tmp_path, "[task]\nname = 'maze'\ndifficulty = [1, 2]\n"))


@pytest.mark.parametrize("text, overrides, old, new", [
    ("[optim]\nste = true\n", [], "optim.ste", "model.bitnet"),
    ("", ["optim.ste=true"], "optim.ste", "model.bitnet"),
    ("[model]\nema_decay = 0.99\n", [], "model.ema_decay", "train.ema_decay"),
    ("", ["model.ema_decay=0.99"], "model.ema_decay", "train.ema_decay"),
])
def test_a_moved_key_is_refused_naming_where_it_went(tmp_path, text, overrides, old, new):
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text), overrides)
    msg = str(e.value)
    assert f"{old} has moved to {new}; set {new} instead." in msg and "\n" not in msg


def test_ema_decay_is_a_train_setting(tmp_path):
    assert config.load(write(tmp_path, "[train]\nema_decay = 0.9\n")).train.ema_decay == 0.9
    assert config.RunConfig().train.ema_decay == 0.999
    with pytest.raises(ConfigError, match="train.ema_decay"):
        config.load(write(tmp_path, "[train]\nema_decay = 1.5\n"))


def test_bitnet_is_a_model_switch_that_no_preset_sets(tmp_path):
    from engine.optim import PRESETS

    assert config.load(write(tmp_path, "[model]\nbitnet = true\n[optim]\npreset = 'phase5'\n")).model.bitnet
    assert not config.load(write(tmp_path, "[optim]\npreset = 'phase5'\n")).model.bitnet
    assert not any("ste" in preset for preset in PRESETS.values())


@pytest.mark.parametrize("name", ["a/b", "a\nb", ".hidden", "x" * 65, "a b", "..", "run:1", "ü"])
def test_a_run_name_outside_letters_digits_dot_underscore_dash_is_refused(tmp_path, name):
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, ""), ["name=" + json.dumps(name)])
    msg = str(e.value)
    assert msg.startswith("--set name: name = ") and "1 to 64 letters, digits" in msg and "\n" not in msg


@pytest.mark.parametrize("name", ["run", "run-1.2_x", "A" * 64, "_x", "-x", "7"])
def test_a_run_name_of_letters_digits_dot_underscore_dash_loads(tmp_path, name):
    assert config.load(write(tmp_path, f'name = "{name}"\n')).name == name


def test_the_cli_refuses_a_bad_run_name_without_a_traceback_and_writes_nothing(tmp_path):
    from tests.helpers import lab, tiny_config

    runs_dir = tmp_path / "runs"
    for name in ('"a/b"', '"a\\nb"'):
        out = lab("run", str(tiny_config(tmp_path)), "--headless", "--set", f"name={name}", "--runs-dir", str(runs_dir))
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("lab: --set name") and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        assert not runs_dir.exists()


def test_every_task_builds_from_its_default_config():
    from typing import get_args, get_type_hints

    from engine.tasks.registry import DATASET_TASKS, task_from_config

    names = get_args(get_type_hints(config.TaskConfig)["name"])
    assert len(names) >= 10
    for name in names:
        if name in DATASET_TASKS:  # built from a dataset on disk: tests/test_dexter_task.py builds one
            continue
        task = task_from_config(config.TaskConfig(name=name))
        sample = task.sample("train", 0)
        assert len(sample.inputs) == len(sample.labels) == task.seq_len


def test_a_clash_between_settings_names_the_set_that_took_part(tmp_path):
    path = write(tmp_path, '[model]\nmemory = "titans-mag"\n')
    with pytest.raises(ConfigError) as err:
        config.load(path, ["model.mixer=mlp", "train.seed=3"])
    assert str(err.value).startswith(f"{path} with --set model.mixer: model.memory = 'titans-mag' needs")
    with pytest.raises(ConfigError) as err:  # the same clash written in the file names the file alone
        config.load(write(tmp_path, '[model]\nmemory = "titans-mag"\nmixer = "mlp"\n'), ["train.seed=3"])
    assert str(err.value).startswith(f"{path}: model.memory")
