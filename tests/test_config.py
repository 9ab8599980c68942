from pathlib import Path

import pytest
import torch
import yaml

from softmaxlab.config import Config, load_config, parse_override
from softmaxlab.errors import UserError


def test_defaults_validate_and_roundtrip_through_yaml(tmp_path):
    cfg = load_config()
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_overrides_are_typed():
    cfg = load_config(
        None, ["train.epochs=3", "head.name=log_softmax", "model.widths=[8, 16]", "data.flip=false", "train.lr=1e-3"]
    )
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.head.name == "log_softmax"
    assert cfg.model.widths == [8, 16]
    assert cfg.data.flip is False
    assert cfg.train.lr == pytest.approx(1e-3)


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  lr: 0.1\nhead:\n  name: log_softmax\n")
    cfg = load_config(path, ["train.epochs=2"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.head.name) == (2, 0.1, "log_softmax")


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == Config()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.epoch=3"], "unknown config key 'train.epoch'.*did you mean 'train.epochs'"),
        (["trian.epochs=3"], "unknown config key 'trian'.*did you mean 'train'"),
        (["train.epochs=abc"], "invalid value for 'train.epochs'.*integer"),
        (["train.epochs=0"], "invalid value for 'train.epochs'.*greater than or equal to 1"),
        (["train.epochs=-2"], "invalid value for 'train.epochs'"),
        (["train.batch_size=0"], "invalid value for 'train.batch_size'"),
        (["head.name=sofmax"], "unknown head 'sofmax'.*did you mean 'softmax'.*valid: softmax, log_softmax"),
        (["model.name=resnet"], "unknown model 'resnet'.*valid: simple_cnn"),
        (["model.activation=rleu"], "unknown activation 'rleu'.*did you mean 'relu'"),
        (["data.name=cifar"], "unknown dataset 'cifar'.*valid: shapes"),
        (["train.optimizer=rmsprop"], "invalid value for 'train.optimizer'"),
        (["model.widths=[]"], "invalid value for 'model.widths'"),
        (["name=../escape"], "invalid value for 'name'"),
        (["train.epochs"], "must look like section.key=value"),
        (["train.epochs=3", "train.epochs.x=1"], "'train.epochs' is a value, not a section"),
    ],
)
def test_bad_overrides_are_one_line_user_errors(overrides, expected):
    with pytest.raises(UserError, match=expected) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value)


def test_missing_and_non_yaml_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [epochs: 3\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(listy)


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochz": 3}}))
    with pytest.raises(UserError, match=r"unknown config key 'train.epochz' in .*c.yaml"):
        load_config(path)


def test_parse_override_parses_yaml_values():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a.b=x=y") == (["a", "b"], "x=y")
    assert parse_override("a.b=") == (["a", "b"], None)


def test_numeric_run_name_is_text():
    assert load_config(None, ["name=2024"]).name == "2024"


def test_channels_last_unset_follows_the_activation(tmp_path):
    # Unset: on (faster convolutions), off with a softmax activation (slower in NHWC); a set value stays.
    assert load_config().train.channels_last is None and load_config().uses_channels_last()
    assert not load_config(None, ["model.activation=softmax_hw"]).uses_channels_last()
    assert not load_config(None, ["model.activation=softmax_c"]).uses_channels_last()
    assert not load_config(None, ["train.channels_last=false"]).uses_channels_last()
    assert load_config(None, ["model.activation=softmax_hw", "train.channels_last=true"]).uses_channels_last()
    # Decided from the config as it is: a copy with another activation gets its own layout.
    cfg = load_config()
    copy = cfg.model_copy(update={"model": cfg.model.model_copy(update={"activation": "softmax_h"})})
    assert cfg.uses_channels_last() and not copy.uses_channels_last()
    # The saved config keeps it unset and reloads to the same config.
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    assert "channels_last: null" in cfg.to_yaml() and load_config(tmp_path / "c.yaml") == cfg


def test_sweep_variants_get_the_layout_of_their_activation(tmp_path):
    from softmaxlab import sweep

    path = tmp_path / "s.yaml"
    path.write_text("sweep:\n  variants:\n    - {model.activation: relu}\n    - {model.activation: softmax_hw}\n")
    base, spec = sweep.load_sweep(path)
    layouts = {r.config.model.activation: r.config.uses_channels_last() for r in sweep.expand_grid(base, spec)}
    assert layouts == {"relu": True, "softmax_hw": False}


def test_progressive_resizing_sizes_per_epoch():
    # Off by default.
    assert {load_config(None, ["data.image_size=64"]).train_image_size(e) for e in range(1, 9)} == {64}
    # Half the size (never below 32 px) for the first half of the epochs, then a linear ramp to
    # the full size in steps of 16 px.
    cfg = load_config(None, ["data.image_size=64", "train.low_res_fraction=0.5"])
    assert [cfg.train_image_size(e) for e in range(1, 9)] == [32, 32, 32, 32, 48, 48, 64, 64]
    on = "train.low_res_fraction=0.5"
    assert {load_config(None, ["data.image_size=32", on]).train_image_size(e) for e in range(1, 9)} == {32}
    assert load_config(None, ["data.image_size=48", on]).train_image_size(1) == 32  # not 24
    big = load_config(None, ["data.image_size=128", on])
    assert [big.train_image_size(e) for e in range(1, 9)] == [64, 64, 64, 64, 80, 96, 112, 128]
    odd = load_config(None, ["data.image_size=150", "train.epochs=4", on])
    assert [odd.train_image_size(e) for e in range(1, 5)] == [75, 75, 128, 150]  # 112.5 -> 128; capped at 150
    set_ = load_config(None, ["train.low_res_size=40", "train.low_res_fraction=0.3", "train.epochs=10"])
    assert [set_.train_image_size(e, image_size=64) for e in range(1, 11)] == [40] * 3 + [48] * 2 + [64] * 5
    assert load_config(None, ["train.low_res_size=80", on]).train_image_size(1, image_size=64) == 64  # never larger
    with pytest.raises(ValueError, match="image_size is unset"):
        load_config().train_image_size(1)
    # A fraction that would round down to no low-resolution epoch is refused, the smallest one kept.
    with pytest.raises(UserError, match=r"rounds down to no epoch .* at least 0\.334"):
        load_config(None, ["train.low_res_fraction=0.3", "train.epochs=3"])
    least = load_config(None, ["data.image_size=64", "train.low_res_fraction=0.334", "train.epochs=3"])
    assert [least.train_image_size(e) for e in (1, 2, 3)] == [32, 48, 64]


# --------------------------------------------------------------------------- sections composed from components


def test_a_config_pickles_with_what_was_set_so_a_sweep_sees_the_same_defaults():
    import pickle

    from softmaxlab import sweep

    base = load_config(None, ["train.epochs=1", "model.dropout=0.1"])
    again = pickle.loads(pickle.dumps(base))
    assert again == base and again.model.model_fields_set == base.model.model_fields_set == {"dropout"}
    spec = sweep.SweepSpec(grid={"model.name": ["simple_cnn", "resnet12"]})
    for b in (base, again):  # the resnet12 run gets resnet12's widths either way
        assert [r.config.model.widths for r in sweep.expand_grid(b, spec)] == [[32, 64, 128, 256], [64, 160, 320, 640]]


def test_the_component_keys_of_a_section_are_not_assigned():
    cfg = load_config()
    with pytest.raises(
        TypeError, match=r"head\.name picks the component .* load_config\(None, \['head\.name=gumbel'\]\)"
    ):
        cfg.head.name = "gumbel"
    cfg.train.epochs = 3  # other keys are assigned (and validated) as before
    assert cfg.train.epochs == 3


def test_a_removed_key_says_so():
    from softmaxlab.config import closest_key

    assert "removed" in closest_key("head.hard") and "did you mean" in closest_key("head.tua")
    with pytest.raises(UserError, match=r"'head\.hard'.*this option was removed"):
        load_config(None, ["head.name=gumbel", "head.hard=true"])


def test_components_of_one_section_may_not_share_an_option_name():
    from pydantic import Field

    from softmaxlab import ACTIVATIONS, Options

    class Width(Options):
        width: float = Field(7.0, gt=0)  # clashes with the built-in models' model.width

    ACTIVATIONS.register("wide_relu", options=Width)(lambda options: torch.nn.ReLU())
    try:
        with pytest.raises(UserError, match=r"model\.name='simple_cnn' and model\.activation='wide_relu' both have"):
            load_config(None, ["model.activation=wide_relu"])
    finally:
        ACTIVATIONS.unregister("wide_relu")


def test_an_option_another_component_shares_with_another_default_does_not_break_old_configs(tmp_path):
    from pydantic import Field

    from softmaxlab import HEADS, Options
    from softmaxlab.config import load_run_config
    from softmaxlab.heads.softmax import SoftmaxHead

    class Tau(Options):
        tau: float = Field(2.0, gt=0)  # gumbel's tau defaults to 1.0

    HEADS.register("tau_head", options=Tau)(type("TauHead", (SoftmaxHead,), {}))
    try:
        legacy = Path(__file__).parent / "fixtures" / "legacy-runs" / "softmax-unfinished"
        assert load_run_config(legacy).head.name == "softmax"  # its flat head.tau: 1.0, gumbel's default
        with pytest.raises(UserError, match=r"applies to head\.name=gumbel and tau_head only"):
            load_config(None, ["head.tau=3"])
    finally:
        HEADS.unregister("tau_head")


def test_the_resolved_config_holds_only_the_chosen_components_options():
    data = load_config(None, ["data.name=npz", "data.root=a.npz"]).to_dict()["data"]
    assert data["root"] == "a.npz" and "test_fraction" in data
    assert not {"num_classes", "train_size", "download", "labels", "skip_corrupt"} & set(data)  # other datasets'
    model = load_config(None, ["model.activation=softmax_hw"]).to_dict()["model"]
    assert model["softmax_blocks"] is None and "widths" in model
    assert "softmax_blocks" not in load_config().to_dict()["model"]  # relu has no softmax options


# --------------------------------------------------------------------------- another component on the command line


def study_file(tmp_path: Path, **sections: dict) -> Path:
    """A config file of a simple_cnn with its own options, a gumbel head and shapes data."""
    raw = {
        "data": {"name": "shapes", "num_classes": 4, "image_size": 16},
        "model": {"name": "simple_cnn", "widths": [8, 16], "batch_norm": False, "dropout": 0.1},
        "head": {"name": "gumbel", "tau": 0.5},
        **sections,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_component_chosen_on_the_command_line_drops_the_files_options_it_does_not_declare(tmp_path):
    path = study_file(tmp_path)
    notes: list[str] = []
    cfg = load_config(path, ["model.name=timm:resnet18"], on_note=notes.append)
    model = cfg.to_dict()["model"]
    assert model["name"] == "timm:resnet18" and model["dropout"] == 0.1  # both models declare dropout: kept
    assert not {"widths", "batch_norm"} & set(model) and cfg.head.tau == 0.5  # another section: untouched
    assert notes == [
        f"model.widths, model.batch_norm from {path} do not apply to model.name=timm:resnet18 and were dropped"
    ]
    # Two sections in one line; one option reads in the singular.
    notes.clear()
    load_config(path, ["head.name=softmax", "model.name=torchvision:resnet18"], on_note=notes.append)
    assert notes == [
        f"model.widths, model.batch_norm, head.tau from {path} do not apply to "
        "model.name=torchvision:resnet18, head.name=softmax and were dropped"
    ]
    notes.clear()
    assert load_config(path, ["data.name=npz", "data.root=x.npz"], on_note=notes.append).data.image_size == 16
    assert notes == [f"data.num_classes from {path} does not apply to data.name=npz and was dropped"]
    # The activation picks options too: the file's softmax_blocks go with its softmax_hw.
    path = study_file(tmp_path, model={"activation": "softmax_hw", "softmax_blocks": [1], "widths": [8, 16]})
    notes.clear()
    assert load_config(path, ["model.activation=relu"], on_note=notes.append).model.widths == [8, 16]
    assert notes == [f"model.softmax_blocks from {path} does not apply to model.activation=relu and was dropped"]


def test_options_on_the_command_line_are_never_dropped_and_an_unchanged_component_drops_nothing(tmp_path):
    path = study_file(tmp_path)
    with pytest.raises(UserError, match=r"'model\.widths' in .*: applies to model\.name=simple_cnn and resnet12 only"):
        load_config(path, ["model.name=timm:resnet18", "model.widths=[8]"])
    with pytest.raises(UserError, match=r"'model\.batch_norm'.*model\.name is 'timm:resnet18'"):
        load_config(path, ["model.batch_norm=false", "model.name=timm:resnet18"])
    notes: list[str] = []
    for overrides in ([], ["model.name=simple_cnn"], ["model.name=resnet12"], ["head.name=gumbel", "train.epochs=1"]):
        cfg = load_config(path, overrides, on_note=notes.append)  # resnet12 declares widths and batch_norm too
        assert cfg.model.widths == [8, 16] and cfg.model.batch_norm is False and cfg.head.tau == 0.5
    assert notes == []
    # A whole section on the command line replaces the file's: nothing of the file is left to drop.
    assert load_config(path, ["model={name: timm:resnet18}"], on_note=notes.append).model.activation == "keep"
    assert notes == []


def test_an_option_the_files_own_component_does_not_declare_stays_an_error(tmp_path):
    path = study_file(tmp_path, head={"name": "softmax", "tau": 2})
    with pytest.raises(UserError, match=r"'head\.tau'.*applies to head\.name=gumbel only; head\.name is 'temperature'"):
        load_config(path, ["head.name=temperature"])
    # As does a key no component has, and a malformed override.
    path = study_file(tmp_path, model={"name": "simple_cnn", "widthz": [8]})
    with pytest.raises(UserError, match=r"unknown config key 'model\.widthz'.*did you mean"):
        load_config(path, ["model.name=timm:resnet18"])
    with pytest.raises(UserError, match=r"must look like section\.key=value"):
        load_config(path, ["model.name"])


def test_apply_command_line_returns_what_it_dropped():
    from softmaxlab.config import DroppedOptions, apply_command_line

    raw = {"model": {"name": "simple_cnn", "widths": [8]}, "train": {"epochs": 3}}
    dropped = apply_command_line(raw, ["model.name=timm:resnet18", "train.epochs=1"], "f.yaml")
    assert dropped == DroppedOptions(("model.widths",), "f.yaml", ("model.name=timm:resnet18",))
    assert raw == {"model": {"name": "timm:resnet18"}, "train": {"epochs": 1}}
    assert apply_command_line(raw, ["model.name=timm:resnet50"], "f.yaml") is None  # nothing left to drop
