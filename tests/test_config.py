"""Config loading: defaults, YAML merge, `base:` chains, overrides, validation messages, round trip."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from famkd.config import Config, config_from_dict, load_config
from famkd.distill import list_options
from famkd.errors import ConfigError, FamkdDeprecationWarning
from famkd.settings import dump_settings, parse_override, settings_to_dict, valid_keys


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_match_the_published_cifar_recipe():
    cfg = load_config(None)
    assert cfg == Config()
    assert (cfg.method, cfg.student, cfg.device, cfg.amp) == ("vanilla", "resnet20", "auto", "off")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr) == (240, 64, 0.05)
    assert cfg.train.lr_milestones == [150, 180, 210]
    assert (cfg.train.momentum, cfg.train.weight_decay, cfg.train.lr_decay) == (0.9, 5e-4, 0.1)
    assert (cfg.train.max_steps_per_epoch, cfg.train.eval_batch_size, cfg.train.log_interval) == (0, 256, 20)
    assert (cfg.data.dataset, cfg.data.root, cfg.data.train_per_class, cfg.data.classes) == ("cifar100", "", 0, 0)
    assert cfg.data.download is False  # famkd downloads only when asked
    assert (cfg.run.dir, cfg.run.seed, cfg.run.deterministic, cfg.run.tensorboard) == ("", 0, False, True)
    assert (cfg.teacher.name, cfg.teacher.checkpoint, cfg.teacher.sha256) == ("", "", "")
    assert cfg.distill == {"ce_weight": 1.0}  # the default method's options, all of them


def test_default_lists_are_not_shared_between_configs():
    first, second = Config(), Config()
    first.train.lr_milestones.append(1)
    first.distill["ce_weight"] = 2.0
    assert second.train.lr_milestones == [150, 180, 210] and second.distill == {"ce_weight": 1.0}


def test_yaml_file_states_only_what_differs(tmp_path):
    path = write(
        tmp_path / "exp.yaml",
        """
        method: fam_kd
        student: resnet20
        teacher: {name: resnet56}
        distill: {loss_weight: 2.0, warmup_epochs: 5}
        train:
          lr: 0.01
          lr_milestones: [1, 2]
        amp: off
    """,
    )
    cfg = load_config(path)
    assert cfg.method == "fam_kd" and cfg.teacher.name == "resnet56"
    assert cfg.distill == {**list_options("fam_kd"), "loss_weight": 2.0, "warmup_epochs": 5}
    assert cfg.train.lr == 0.01 and cfg.train.lr_milestones == [1, 2]
    assert cfg.train.epochs == 240 and cfg.train.batch_size == 64  # untouched defaults
    assert cfg.amp == "off"  # unquoted YAML `off` is read as false and mapped back


def test_empty_section_headers_change_nothing(tmp_path):
    path = write(tmp_path / "exp.yaml", "teacher:\ndistill:\ntrain:\n  epochs: 3\n")
    cfg = load_config(path)
    assert cfg.teacher == Config().teacher and cfg.distill == {"ce_weight": 1.0} and cfg.train.epochs == 3


def test_base_file_is_inherited_and_overridden(tmp_path):
    (tmp_path / "common").mkdir()
    write(
        tmp_path / "common" / "base.yaml",
        """
        method: kd
        train: {epochs: 10, lr: 0.1}
        distill: {temperature: 2.0, ce_weight: 0.5}
    """,
    )
    path = write(
        tmp_path / "child.yaml",
        """
        base: common/base.yaml
        train: {lr: 0.2}
        distill: {ce_weight: 0.3}
    """,
    )
    cfg = load_config(path)
    assert (cfg.train.epochs, cfg.train.lr) == (10, 0.2)
    assert cfg.distill == {"temperature": 2.0, "ce_weight": 0.3, "loss_weight": 0.9}


def test_base_loop_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")


def test_overrides_are_parsed_as_yaml_and_win_over_the_file(tmp_path):
    path = write(tmp_path / "exp.yaml", "train: {epochs: 5}\nrun: {dir: /x}\n")
    cfg = load_config(
        path,
        [
            "train.epochs=2",
            "run.deterministic=true",
            "train.lr_milestones=[1,2]",
            "train.lr=1",
            "run.dir=",
            "method=kd",
            "distill.temperature=4",
            "distill.loss_weight=0.5",
        ],
    )
    assert cfg.train.epochs == 2 and cfg.run.deterministic is True
    assert cfg.train.lr_milestones == [1, 2]
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # int accepted for float
    assert cfg.run.dir == ""
    assert cfg.distill == {"temperature": 4.0, "loss_weight": 0.5, "ce_weight": 0.1}


REQUIRED_OVERRIDES = {
    "data.root": ("/some/dir", lambda c: c.data.root),
    "data.train_per_class": (50, lambda c: c.data.train_per_class),
    "train.epochs": (2, lambda c: c.train.epochs),
    "train.batch_size": (32, lambda c: c.train.batch_size),
    "train.max_steps_per_epoch": (7, lambda c: c.train.max_steps_per_epoch),
    "run.dir": ("runs/x", lambda c: c.run.dir),
    "run.seed": (3, lambda c: c.run.seed),
    "run.deterministic": (True, lambda c: c.run.deterministic),
    "teacher.checkpoint": ("t.pth", lambda c: c.teacher.checkpoint),
    "teacher.sha256": ("ab" * 32, lambda c: c.teacher.sha256),
    "device": ("cpu", lambda c: c.device),
    "amp": ("bf16", lambda c: c.amp),
}


@pytest.mark.parametrize("key", sorted(REQUIRED_OVERRIDES))
def test_every_required_override_exists_under_its_name(key):
    value, read = REQUIRED_OVERRIDES[key]
    text = str(value).lower() if isinstance(value, bool) else str(value)
    cfg = load_config(None, [f"{key}={text}"])
    assert read(cfg) == value and read(Config()) != value
    assert key in valid_keys(Config)


def test_string_fields_keep_override_text_that_yaml_would_read_as_a_number():
    digits = "0123456789" * 6 + "0123"
    cfg = load_config(None, [f"teacher.sha256={digits}", "data.root=2024", "run.dir='007'"])
    assert cfg.teacher.sha256 == digits and cfg.data.root == "2024" and cfg.run.dir == "007"
    assert load_config(None, ["amp=off"]).amp == "off"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=2", "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
        ("trian.epochs=2", "unknown key 'trian.epochs' (did you mean 'train.epochs'?)"),
        ("epochs=2", "unknown key 'epochs' (did you mean 'train.epochs'?)"),
        ("train.seed=1", "unknown key 'train.seed' (did you mean 'run.seed'?)"),
        ("data.train_per_clas=5", "unknown key 'data.train_per_clas' (did you mean 'data.train_per_class'?)"),
        ("teacher.sha=ab", "unknown key 'teacher.sha' (did you mean 'teacher.sha256'?)"),
    ],
)
def test_unknown_override_names_the_key_and_the_nearest_valid_one(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == message


def test_unknown_key_in_a_file_names_the_nearest_valid_one(tmp_path):
    path = write(tmp_path / "exp.yaml", "train:\n  weight_dacay: 0.001\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.weight_dacay' \(did you mean 'train.weight_decay'\?\)"):
        load_config(path)


def test_unknown_key_without_a_near_match_lists_the_section():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["run.zzzzzz=1"])
    assert "unknown key 'run.zzzzzz'" in str(err.value)
    assert "dir, seed, deterministic, tensorboard" in str(err.value)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epochs=true", "train.epochs must be an integer, got True"),
        ("train.epochs=2.5", "train.epochs must be an integer"),
        ("train.lr=fast", "train.lr must be a number"),
        ("train.lr=true", "train.lr must be a number"),
        ("run.deterministic=1", "run.deterministic must be true or false"),
        ("train.lr_milestones=[1,2.5]", "train.lr_milestones must be a list of integers"),
        ("train.lr_milestones=5", "train.lr_milestones must be a list of integers"),
        ("train.lr_milestones=[1,true]", "train.lr_milestones must be a list of integers"),
        ("device=gpu", "device='gpu' is not allowed (did you mean 'cuda'?); choose one of: cpu, cuda, auto"),
        ("amp=bf15", "amp='bf15' is not allowed (did you mean 'bf16'?); choose one of: off, bf16, fp16"),
        ("data.dataset=cifar10", "data.dataset='cifar10' is not allowed"),
        ("train.batch_size=0", "train.batch_size=0 is too small: it must be >= 1"),
        ("data.train_per_class=-1", "data.train_per_class=-1 is too small"),
        ("distill=3", "distill must be a mapping"),
        ("train=3", "'train' is a section"),
        ("device.kind=cpu", "'device' is a single value, not a section"),
        ("trainepochs", "must look like key.sub=value"),
        ("train.lr=[1", "not valid YAML"),
    ],
)
def test_bad_values_are_rejected_with_the_key_and_the_rule(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_unquoted_number_for_a_string_field_in_a_file_asks_for_quotes(tmp_path):
    path = write(tmp_path / "exp.yaml", "teacher: {sha256: 12345}\n")
    with pytest.raises(ConfigError, match=r"teacher.sha256 must be a string \(quote it in YAML\), got 12345"):
        load_config(path)


def test_missing_or_malformed_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path / "bad.yaml", "train: {epochs: 2\n"))
    assert load_config(write(tmp_path / "empty.yaml", "")) == Config()


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = load_config(
        None,
        [
            "method=fam_kd",
            "distill.loss_weight=0.5",
            "distill.hpf=gaussian",
            "train.lr_milestones=[3]",
            "run.seed=9",
            "amp=fp16",
            "teacher.sha256=" + "f" * 64,
        ],
    )
    assert config_from_dict(settings_to_dict(cfg)) == cfg
    assert config_from_dict(yaml.safe_load(dump_settings(cfg))) == cfg
    saved = write(tmp_path / "merged.yaml", dump_settings(cfg))
    assert load_config(saved) == cfg


def test_settings_to_dict_is_a_deep_copy():
    cfg = Config()
    values = settings_to_dict(cfg)
    values["train"]["lr_milestones"].append(1)
    assert cfg.train.lr_milestones == [150, 180, 210]


def test_parse_override_splits_at_the_first_equals_sign():
    assert parse_override("run.dir=a=b") == ("run.dir", "a=b")
    assert parse_override("train.lr_milestones=[1, 2]") == ("train.lr_milestones", [1, 2])


# ---- method options (the `distill:` section) ------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "distill.hpf=gausian",
            "distill.hpf='gausian' is not allowed (did you mean 'gaussian'?); choose one of: "
            "ideal, radial, gaussian, butterworth, none",
        ),
        ("distill.cutoff=abc", "distill.cutoff must be a number, got 'abc' (str)"),
        ("distill.cutoff=-1", "distill.cutoff=-1.0 is too small: it must be > 0.0"),
        ("distill.loss_weight=-1", "distill.loss_weight=-1.0 is too small: it must be >= 0.0"),
        ("distill.order=0", "distill.order=0 is too small: it must be >= 1"),
        ("distill.warmup_epochs=1.5", "distill.warmup_epochs must be an integer, got 1.5 (float)"),
        ("distill.student_preact=yes please", "distill.student_preact must be true or false, got 'yes please' (str)"),
    ],
)
def test_bad_method_option_values_are_rejected_when_the_config_loads(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["method=fam_kd", override])
    assert str(err.value) == message


def test_unknown_method_option_names_the_closest_current_name():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["method=fam_kd", "distill.alpah=3"])
    assert str(err.value).startswith(
        "unknown option 'distill.alpah' for method 'fam_kd' (did you mean 'distill.loss_weight'?); its options: "
        "loss_weight, ce_weight, warmup_epochs, student_preact, hpf, cutoff, order, max_mid_channels"
    )
    with pytest.raises(ConfigError, match="unknown option 'distill.hpf' for method 'kd'"):
        load_config(None, ["method=kd", "distill.hpf=ideal"])
    with pytest.raises(ConfigError, match="method: unknown distillation method 'fam_kdd' .*did you mean 'fam_kd'"):
        load_config(None, ["method=fam_kdd"])


def test_old_loss_weight_names_still_work_with_a_deprecation_warning():
    with pytest.warns(FamkdDeprecationWarning, match=r"distill.alpha is deprecated .*use distill.loss_weight"):
        cfg = load_config(None, ["method=fam_kd", "distill.alpha=20"])
    assert cfg.distill["loss_weight"] == 20.0 and "alpha" not in cfg.distill
    with pytest.warns(FamkdDeprecationWarning, match=r"distill.kd_weight is deprecated .*use distill.loss_weight"):
        assert load_config(None, ["method=kd", "distill.kd_weight=0.7"]).distill["loss_weight"] == 0.7
    with pytest.raises(ConfigError, match="distill.alpha and distill.loss_weight are both set"):
        load_config(None, ["method=fam_kd", "distill.alpha=2", "distill.loss_weight=3"])
    with pytest.warns(FamkdDeprecationWarning), pytest.raises(ConfigError, match="loss_weight=-1.0 is too small"):
        load_config(None, ["method=fam_kd", "distill.alpha=-1"])


def test_unknown_model_names_fail_when_the_config_loads():
    with pytest.raises(ConfigError, match="student: unknown model 'resnet9' .*did you mean 'resnet8'"):
        load_config(None, ["student=resnet9"])
    with pytest.raises(ConfigError, match="teacher.name: unknown model 'resnet5' "):
        load_config(None, ["method=kd", "teacher.name=resnet5"])


def test_numbers_yaml_1_1_reads_as_strings_are_numbers(tmp_path):
    """YAML 1.1 reads 5e-4 and 1.0e9 (no dot, or no sign in the exponent) as strings; famkd takes them as numbers."""
    cfg = load_config(None, ["train.weight_decay=5e-4", "train.lr=1.0e9", "train.momentum=1e-1"])
    assert (cfg.train.weight_decay, cfg.train.lr, cfg.train.momentum) == (5e-4, 1e9, 0.1)
    path = write(tmp_path / "c.yaml", "train:\n  weight_decay: 5e-4\n")
    assert load_config(path).train.weight_decay == 5e-4
    with pytest.raises(ConfigError, match="train.lr must be a number, got 'fast'"):
        load_config(None, ["train.lr=fast"])


def test_settings_that_contradict_the_data_are_refused():
    with pytest.raises(ConfigError, match="data.crop_size=224 exceeds data.resize_size=40"):
        load_config(None, ["data.dataset=imagenet", "data.crop_size=224", "data.resize_size=40"])
    with pytest.raises(ConfigError, match="set exactly one of train.epochs and train.iterations"):
        load_config(None, ["train.iterations=100"])
