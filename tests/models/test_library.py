"""Library models as backbones: ``timm:<name>`` and ``torchvision:<name>`` without their classifier,
their stages, ``model.activation`` put into them, their weights, and their CLI runs."""

from __future__ import annotations

import json
import math
import urllib.error
import warnings
from collections import Counter
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

from softmaxlab.activations import AxisSoftmax
from softmaxlab.cli import app
from softmaxlab.config import load_config
from softmaxlab.errors import UserError
from softmaxlab.models import build_model
from softmaxlab.models.external import create_library_model, load_weights_file
from softmaxlab.models.families import timm_stages
from softmaxlab.train import fit

from ..conftest import TINY

#: A library model's run: 4 classes at 32 px, a handful of images, one epoch.
FAST = [
    *(
        s
        for s in TINY
        if not s.startswith(("model.widths", "data.image_size", "data.train_size", "data.val", "data.test"))
    ),
    "data.image_size=32",
    "data.train_size=64",
    "data.val_size=32",
    "data.test_size=32",
    "train.epochs=1",
    "train.batch_size=32",
]

runner = CliRunner()


def model_of(*overrides: str, classes: int = 5) -> nn.Module:
    return build_model(load_config(None, list(overrides)), 3, classes)


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def kinds(module: nn.Module) -> Counter:
    return Counter(type(m).__name__ for m in module.modules())


# --------------------------------------------------------------------------- built without the classifier


def test_timm_resnet18_is_its_features_and_each_parameter_once():
    model = model_of("model.name=timm:resnet18")
    backbone = model.backbone
    assert backbone.out_features == 512 and backbone(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert not any(isinstance(m, nn.Linear) for m in backbone.modules())  # timm's fc is gone (num_classes=0)
    assert model.head.fc.in_features == 512 and model.head.fc.out_features == 5
    assert parameters(backbone) == parameters(timm.create_model("resnet18", num_classes=0)) == 11_176_512
    # The stages are references into the network, not copies: no key or parameter twice.
    assert backbone.stage_paths == ("layer1", "layer2", "layer3", "layer4")  # its own stages, not the stem
    assert all(b is backbone.net.get_submodule(p) for b, p in zip(backbone.blocks, backbone.stage_paths, strict=True))
    keys = list(model.state_dict())
    assert len(keys) == len(set(keys)) and all(k.startswith(("backbone.net.", "head.")) for k in keys)
    assert len(list(model.parameters())) == len({id(p) for p in model.parameters()})
    assert parameters(model) == 11_176_512 + 512 * 5 + 5


def test_torchvision_resnet18_loses_its_fc_and_exposes_layer1_to_4():
    backbone = model_of("model.name=torchvision:resnet18").backbone
    assert backbone.out_features == 512 and isinstance(backbone.net.fc, nn.Identity)
    assert backbone.stage_paths == ("layer1", "layer2", "layer3", "layer4")
    assert backbone.blocks[2] is backbone.net.layer3
    full = torchvision.models.resnet18()
    assert parameters(backbone) == parameters(full) - (512 * 1000 + 1000)
    assert [b.activation_name for b in backbone.blocks] == ["relu"] * 4  # keep: its own ReLU


def test_torchvision_classifier_keeps_its_hidden_layers_and_only_the_last_linear_goes():
    backbone = model_of("model.name=torchvision:mobilenet_v3_small").backbone
    # classifier = Linear(576, 1024), Hardswish, Dropout, Linear(1024, 1000): the features are the 1024.
    assert backbone.out_features == 1024 and isinstance(backbone.net.classifier[3], nn.Identity)
    assert isinstance(backbone.net.classifier[0], nn.Linear)
    assert backbone.stage_paths[:2] == ("features.0", "features.1") and len(backbone.blocks) == 13
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 1024)


@pytest.mark.parametrize(
    ("name", "stages"),
    [
        # feature_info: blocks.0, 1, 2, 4, 6 (where the resolution changes), so blocks.3 and 5 were no stage
        ("timm:efficientnet_b0", [f"blocks.{i}" for i in range(7)]),
        ("timm:mobilenetv3_small_100", [f"blocks.{i}" for i in range(6)]),  # feature_info begins with the stem
        ("timm:convnext_atto", [f"stages.{i}" for i in range(4)]),
        ("timm:regnetx_002", ["s1", "s2", "s3", "s4"]),
    ],
)
def test_timm_stages_are_the_models_own_stage_containers_without_the_stem(name, stages):
    with torch.device("meta"):  # shapes only: the stages are module names
        backbone = model_of(f"model.name={name}").backbone
    assert list(backbone.stage_paths) == stages


def test_softmax_blocks_of_a_timm_model_count_its_own_stages():
    cfg = ["model.name=timm:efficientnet_b0", "model.activation=softmax_hw", "model.softmax_blocks=[3]"]
    with pytest.warns(UserWarning, match=r"3 pooled \(B, C, 1, 1\), as in squeeze-excitation gates \(blocks\.3\.0"):
        backbone = model_of(*cfg).backbone
    where = {p.split(".")[1] for p, m in backbone.net.named_modules() if isinstance(m, AxisSoftmax)}
    assert where == {"3"}  # blocks.3, which timm's feature_info skips
    assert [b.activation_name for b in backbone.blocks] == ["silu"] * 3 + ["softmax_hw"] + ["silu"] * 3


def test_the_gate_warning_on_the_page_is_the_one_a_run_prints():
    page = Path(__file__).resolve().parents[2] / "docs" / "bring-your-own-model.md"
    (shown,) = [line for line in page.read_text().splitlines() if line.startswith("warning: model.activation=")]
    with pytest.warns(UserWarning) as caught:
        model_of("model.name=timm:efficientnet_b0", "model.activation=softmax_hw")
    assert shown in [f"warning: {w.message}" for w in caught]


def test_timm_stages_fall_back_on_numbered_children_then_on_feature_info():
    net = nn.Module()
    for i in range(3):  # SENet's layer0 is its stem
        net.add_module(f"layer{i}", nn.Conv2d(3, 3, 1))
    assert timm_stages(net) == ["layer1", "layer2"]
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    net.feature_info = [{"module": ""}, {"module": "1"}, {"module": "gone"}]  # "": TResNet's tap on the whole model
    assert timm_stages(net) == ["1"]


# --------------------------------------------------------------------------- GoogLeNet and Inception v3


def test_torchvision_googlenet_is_a_backbone_without_its_auxiliary_classifiers():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchvision's FutureWarning when init_weights is not given
        backbone = model_of("model.name=torchvision:googlenet").backbone
    assert backbone.net.aux1 is None and backbone.net.aux2 is None and backbone.out_features == 1024
    assert backbone.train()(torch.randn(2, 3, 32, 32)).shape == (2, 1024)  # a tensor in training too
    # Asked for, the auxiliary outputs come as a named tuple in training: model.output names the features.
    aux = ["model.name=torchvision:googlenet", "model.kwargs={aux_logits: true}"]
    chosen = model_of(*aux, "model.output=logits").backbone.train()
    assert chosen(torch.randn(2, 3, 32, 32)).shape == (2, 1024)
    with pytest.raises(UserError) as err:
        model_of(*aux).backbone.train()(torch.randn(2, 3, 32, 32))
    assert str(err.value) == (
        "model 'torchvision:googlenet' outputs GoogLeNetOutputs of 3: logits (2, 1024), aux_logits2 (2, 1000), "
        "aux_logits1 (2, 1000); choose the tensor to use with model.output: logits, aux_logits2 or aux_logits1"
    )


def test_googlenets_pretrained_and_full_weights_load_without_the_auxiliary_classifiers(monkeypatch, tmp_path):
    full = torchvision.models.googlenet(aux_logits=True, init_weights=True)  # as torchvision's weights are
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda *a, **k: full.state_dict())
    pretrained = model_of("model.name=torchvision:googlenet", "model.pretrained=true").backbone
    assert pretrained.net.aux1 is None  # torchvision drops them itself: softmaxlab passes no aux_logits
    torch.testing.assert_close(pretrained.net.conv1.conv.weight, full.conv1.conv.weight)
    torch.save(full.state_dict(), tmp_path / "g.pt")
    with pytest.warns(UserWarning, match=r"left out torchvision:googlenet's classifier \(aux1\.conv\.bn\.bias, "):
        loaded = model_of("model.name=torchvision:googlenet", f"model.weights={tmp_path / 'g.pt'}").backbone
    torch.testing.assert_close(loaded.net.inception5b.branch1.conv.weight, full.inception5b.branch1.conv.weight)


def test_torchvision_inception_v3_runs_from_75_px_and_says_so_in_one_line_below():
    backbone = model_of("model.name=torchvision:inception_v3").backbone.train()
    assert backbone.net.AuxLogits is None and backbone(torch.randn(2, 3, 75, 75)).shape == (2, 2048)
    with pytest.raises(UserError) as err:
        backbone(torch.randn(2, 3, 32, 32))  # a 3 x 3 kernel on a 1 x 1 map, deep inside
    message = str(err.value)
    assert message.startswith("model 'torchvision:inception_v3' fails on 32 x 32 px images (RuntimeError: ")
    assert message.endswith("at least 75 px: set data.image_size to 75 or more, or choose another model")
    assert "\n" not in message


def test_kwargs_reach_the_constructor_and_dropout_the_features():
    backbone = model_of("model.name=timm:resnet18", "model.kwargs={drop_rate: 0.0, global_pool: max}").backbone
    assert backbone.net.global_pool.pool_type == "max"
    assert isinstance(model_of("model.name=timm:resnet18", "model.dropout=0.3").backbone.dropout, nn.Dropout)


# --------------------------------------------------------------------------- activations


def test_the_default_activation_keeps_the_models_own():
    cfg = load_config(None, ["model.name=timm:convnext_atto"])
    assert cfg.model.activation == "keep"
    assert kinds(build_model(cfg, 3, 5).backbone.net) == kinds(timm.create_model("convnext_atto", num_classes=0))
    with pytest.raises(
        UserError, match="keep keeps the activations of a library model or user factory; model 'simple_cnn' builds"
    ):
        build_model(load_config(None, ["model.activation=keep"]), 3, 5)


@pytest.mark.parametrize(("name", "relus"), [("timm:resnet18", 17), ("torchvision:resnet18", 9)])
def test_a_pointwise_activation_replaces_every_activation_module(name, relus):
    assert kinds(model_of(f"model.name={name}").backbone)["ReLU"] == relus
    counts = kinds(model_of(f"model.name={name}", "model.activation=gelu").backbone)
    assert counts["ReLU"] == 0 and counts["GELU"] == relus


def test_a_softmax_goes_into_the_listed_stages_only_and_the_rest_keeps_its_own():
    cfg = ["model.name=torchvision:resnet18", "model.activation=softmax_hw", "model.softmax_blocks=[1,3]"]
    backbone = model_of(*cfg).backbone
    assert [b.activation_name for b in backbone.blocks] == ["relu", "softmax_hw", "relu", "softmax_hw"]
    has_softmax = [any(isinstance(m, AxisSoftmax) for m in b.modules()) for b in backbone.blocks]
    assert has_softmax == [False, True, False, True]
    assert isinstance(backbone.net.relu, nn.ReLU)  # the stem is no stage: it keeps its ReLU
    # Without a list every stage gets it; still not the stem.
    every = model_of("model.name=torchvision:resnet18", "model.activation=softmax_hw").backbone
    assert [b.activation_name for b in every.blocks] == ["softmax_hw"] * 4 and isinstance(every.net.relu, nn.ReLU)
    with pytest.raises(UserError, match=r"softmax_blocks=\[4\] but model 'torchvision:resnet18' has 4 blocks"):
        model_of("model.name=torchvision:resnet18", "model.activation=softmax_hw", "model.softmax_blocks=[4]")


def test_a_shared_activation_module_stays_shared_with_one_learned_temperature():
    # torchvision's BasicBlock applies one ReLU three times: it becomes one softmax, one log T.
    cfg = ["model.name=torchvision:resnet18", "model.activation=softmax_c", "model.learn_activation_temperature=true"]
    model = model_of(*cfg)
    names = [n for n, _ in model.named_parameters() if "temperature" in n]
    assert len(names) == 8 and "backbone.net.layer1.0.relu.log_temperature" in names


def test_replaced_activations_are_in_place_only_where_the_old_ones_were():
    silu = model_of("model.name=torchvision:resnet18", "model.activation=silu").backbone
    assert all(m.inplace for m in silu.modules() if isinstance(m, nn.SiLU))  # torchvision's ReLU(inplace=True)
    relu = model_of("model.name=timm:convnext_atto", "model.activation=relu").backbone
    assert not any(m.inplace for m in relu.modules() if isinstance(m, nn.ReLU))  # GELU was not in place
    assert relu(torch.randn(2, 3, 32, 32)).shape == (2, 320)


# --------------------------------------------------------------------------- weights


def test_weights_from_a_state_dict_leave_out_the_classifier(tmp_path):
    full = torchvision.models.resnet18(num_classes=1000)
    torch.save(full.state_dict(), tmp_path / "r18.pt")
    with pytest.warns(UserWarning, match=r"left out torchvision:resnet18's classifier \(fc\.bias, fc\.weight\)"):
        backbone = model_of("model.name=torchvision:resnet18", f"model.weights={tmp_path / 'r18.pt'}").backbone
    torch.testing.assert_close(backbone.net.conv1.weight, full.conv1.weight)


def test_weights_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    net = timm.create_model("resnet18")  # with its classifier: timm's pretrained_cfg names it (fc)
    save_file(net.state_dict(), tmp_path / "r18.safetensors")
    with pytest.warns(UserWarning, match=r"left out timm:resnet18's classifier \(fc\.bias, fc\.weight\)"):
        backbone = model_of("model.name=timm:resnet18", f"model.weights={tmp_path / 'r18.safetensors'}").backbone
    torch.testing.assert_close(backbone.net.layer4[1].bn2.running_var, net.layer4[1].bn2.running_var)
    assert set(load_weights_file(tmp_path / "r18.safetensors")) == set(net.state_dict())


def test_weights_that_do_not_fit_are_one_line_naming_a_few_keys(tmp_path):
    state = timm.create_model("resnet18", num_classes=0).state_dict()
    state.pop("conv1.weight")
    state["extra.weight"] = torch.zeros(3)
    state["bn1.weight"] = torch.zeros(7)
    torch.save({"state_dict": state}, tmp_path / "w.pt")  # a checkpoint holding a state dict
    with pytest.raises(UserError) as err:
        model_of("model.name=timm:resnet18", f"model.weights={tmp_path / 'w.pt'}")
    message = str(err.value)
    assert "\n" not in message and "does not fit this model" in message
    assert "missing keys: conv1.weight" in message and "unexpected keys: extra.weight" in message
    assert "shapes differ: bn1.weight (7,) vs (64,)" in message


def test_pretrained_without_a_network_is_one_line_naming_model_weights(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", offline)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/cache/model.safetensors")
    for name in ("torchvision:resnet18", "timm:resnet18"):
        cfg = load_config(None, [f"model.name={name}", "model.pretrained=true"])
        with pytest.raises(UserError, match=r"cannot download the pretrained weights .*set model\.weights: PATH"):
            build_model(cfg, 3, 5)
        # A trained run's model is rebuilt without its initial weights: nothing is downloaded.
        assert build_model(cfg, 3, 5, initial_weights=False).backbone.out_features == 512


class Hub:
    """A stand-in for the Hugging Face Hub and timm's downloader: what was asked, and how it answers."""

    def __init__(self, monkeypatch, cached: bool = False, answer: Exception | None = None) -> None:
        self.heads: list[tuple[str, float]] = []
        self.downloads: list[str] = []
        self.answer = answer
        monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/c/f" if cached else None)
        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", self.head)
        monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", self.download)

    def head(self, url: str, timeout: float = 10, **kwargs):
        self.heads.append((url, timeout))
        if self.answer is not None:
            raise self.answer

    def download(self, model_id: str, *args, **kwargs):
        self.downloads.append(model_id)  # the real one would retry for about a minute without a network
        raise urllib.error.URLError("[Errno -2] Name or service not known")


def test_pretrained_timm_weights_without_a_network_fail_at_once_without_timms_retries(monkeypatch):
    import httpx2
    from huggingface_hub import constants

    hub = Hub(monkeypatch, answer=httpx2.ConnectError("[Errno -2] Name or service not known"))
    cfg = load_config(None, ["model.name=timm:resnet18", "model.pretrained=true"])
    with pytest.raises(UserError) as err:
        build_model(cfg, 3, 5)
    message = str(err.value)
    assert message.startswith("cannot download the pretrained weights of 'timm:resnet18' (ConnectError: [Errno -2]")
    assert message.endswith("set model.weights: PATH instead of model.pretrained") and "\n" not in message
    assert hub.downloads == []  # timm's downloader was never reached
    ((url, timeout),) = hub.heads  # one request, within the hub's own timeout
    assert url.endswith("timm/resnet18.a1_in1k/resolve/main/model.safetensors")
    assert timeout == constants.HF_HUB_ETAG_TIMEOUT


@pytest.mark.parametrize("case", ["cached", "answered", "offline"])
def test_the_hub_check_leaves_cached_weights_an_answering_hub_and_hf_hub_offline_to_timm(monkeypatch, case):
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    not_found = httpx2.Response(404, request=httpx2.Request("HEAD", "https://huggingface.co/timm/x"))
    answer = HfHubHTTPError("404 Client Error: Entry Not Found", response=not_found) if case == "answered" else None
    hub = Hub(monkeypatch, cached=case == "cached", answer=answer)
    if case == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"cannot download the pretrained weights of 'timm:resnet18' \(URLError"):
        create_library_model("timm:resnet18", pretrained=True)
    assert hub.downloads == ["timm/resnet18.a1_in1k"]  # timm went on to its own downloader
    assert len(hub.heads) == (1 if case == "answered" else 0)


# --------------------------------------------------------------------------- the full classifier (lint)


def test_create_library_model_is_the_classifier_as_the_library_has_it(tmp_path):
    model = create_library_model("torchvision:resnet18", kwargs={"num_classes": 7})
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 7
    torch.save(model.state_dict(), tmp_path / "w.pt")
    again = create_library_model("torchvision:resnet18", weights=str(tmp_path / "w.pt"), kwargs={"num_classes": 7})
    torch.testing.assert_close(again.fc.weight, model.fc.weight)
    assert timm.create_model("resnet18").default_cfg["num_classes"] == create_library_model("timm:resnet18").num_classes


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("timm:resnt18", "timm has no model 'resnt18' (did you mean 'timm:resnet18'"),
        ("torchvision:resnet18x", "did you mean 'torchvision:resnet18'"),
        ("torchvision:vit_tiny_patch16_224", "did you mean 'timm:vit_tiny_patch16_224'"),
        ("keras:resnet18", "not a library model name"),
    ],
)
def test_unknown_library_names_say_the_closest(name, fragment):
    with pytest.raises(UserError, match=None) as err:
        create_library_model(name)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_timm_weights_that_do_not_exist_are_named_before_anything_is_built():
    with pytest.raises(UserError, match="timm has no weights 'nope' for 'resnet18'"):
        create_library_model("timm:resnet18.nope")
    with_weights = {n.split(".")[0] for n in timm.list_models(pretrained=True)}
    without = next(n for n in timm.list_models() if n not in with_weights)  # timm would go on with random weights
    with pytest.raises(UserError, match=f"timm has no pretrained weights for '{without}'"):
        create_library_model(f"timm:{without}", pretrained=True)


def test_bad_options_of_library_models_are_config_errors():
    cases = {
        "model.kwargs={num_classes: 3}": "'num_classes' is set by softmaxlab",
        "model.kwargs=3": "'model.kwargs'",
        "model.widths=[8]": "applies to model.name=simple_cnn and resnet12 only",
    }
    for override, fragment in cases.items():
        with pytest.raises(UserError, match=None) as err:
            load_config(None, ["model.name=timm:resnet18", override])
        assert fragment in str(err.value), str(err.value)
    with pytest.raises(UserError, match="keep one of them"):
        load_config(None, ["model.name=timm:resnet18", "model.pretrained=true", "model.weights=w.pt"])
    with pytest.raises(UserError, match=r"'model\.pretrained'.*applies to model\.name=timm:<name> and torchvision"):
        load_config(None, ["model.pretrained=true"])
    with pytest.raises(UserError, match=r"unknown model 'resnet18' \(did you mean 'timm:resnet18'\?\).*timm:<name>"):
        load_config(None, ["model.name=resnet18"])
    with pytest.raises(
        UserError, match=r"cannot build 'timm:resnet18' with kwargs \{'depth': 3\}.*check model\.kwargs"
    ):
        model_of("model.name=timm:resnet18", "model.kwargs={depth: 3}")


# --------------------------------------------------------------------------- end to end


def test_cli_run_timm_resnet18_with_sparsemax_trains_and_reports(tmp_path):
    out = tmp_path / "run"
    sets = [a for s in (*FAST, "model.name=timm:resnet18", "head.name=sparsemax") for a in ("--set", s)]
    result = runner.invoke(app, ["run", *sets, "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["test"]["accuracy"] <= 1 and summary["model"] == "timm:resnet18"
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert list(record["activation_stats"]) == [f"block{i}" for i in range(4)]  # layer1..4
    assert "backbone.net.layer4.1.conv2" in record["grad_norms"]
    assert (out / "figures" / "feature_maps.png").stat().st_size > 0 and (out / "report.html").is_file()
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    shown = runner.invoke(app, ["visualize", str(out), str(image), "--out", str(tmp_path / "maps.png")])
    assert shown.exit_code == 0, shown.output
    assert (tmp_path / "maps.png").stat().st_size > 0


def test_torchvision_resnet18_with_a_spatial_softmax_trains_from_a_weights_file(tmp_path):
    from softmaxlab.checkpoint import load_trained

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "init.pt")
    cfg = [
        *FAST,
        "model.name=torchvision:resnet18",
        "model.activation=softmax_hw",
        f"model.weights={tmp_path / 'init.pt'}",
    ]
    with pytest.warns(UserWarning, match="left out torchvision:resnet18's classifier"):
        result = fit(load_config(None, cfg), tmp_path / "r")
    (record,) = result.history
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])
    assert [name for name, _ in result.feature_maps] == ["softmax_hw"] * 4
    # The trained model is rebuilt without reading its initial weights again (they may have moved).
    (tmp_path / "init.pt").unlink()
    model, _, _ = load_trained(result.run_dir)
    torch.testing.assert_close(model.backbone.net.conv1.weight, result.model.backbone.net.conv1.weight)


def test_list_models_names_the_families():
    result = runner.invoke(app, ["list", "models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for fragment in ("timm:<name>", "torchvision:<name>", "path/to/file.py:factory", "package.module:factory"):
        assert fragment in result.stdout
    assert "model.user_head=none" in result.stdout and "sparsemax" in result.stdout


def test_a_library_factory_registered_the_old_way_is_a_one_line_error_pointing_at_the_prefix():
    from softmaxlab.models import MODELS

    MODELS.register(torchvision.models.resnet18)  # bare: registers at once (it used to do nothing)
    try:
        with pytest.raises(
            UserError, match=r"cannot be called as factory\(in_channels.*model\.name=torchvision:<name>"
        ):
            model_of("model.name=resnet18")
    finally:
        MODELS.unregister("resnet18")
