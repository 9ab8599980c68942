"""The sweep: section and its checks (softmaxlab.sweep.spec)."""

import pytest

from softmaxlab import sweep
from softmaxlab.errors import UserError

from .conftest import write_sweep


@pytest.mark.parametrize(
    ("variants", "fragment"),
    [
        ([{}], "is empty"),
        ([{"head.nmae": "softmax"}], "did you mean"),
        ([{"train.seed": 3}], "which sweep.grid also varies"),
        ([{"head.name": "softmax"}, {"head.name": "softmax"}], "repeats"),
        ([{"name": "x"}], "named after its overrides"),
    ],
)
def test_bad_variants_are_user_errors(tmp_path, variants, fragment):
    path = write_sweep(tmp_path / "s.yaml", {"train.seed": [0]}, variants=variants)
    with pytest.raises(UserError, match=fragment):
        sweep.load_sweep(path)


@pytest.mark.parametrize(
    ("grid", "exclude", "fragment"),
    [
        ({"head.tua": [1]}, None, "did you mean"),
        ({"train.seed": []}, None, "empty list"),
        ({"train.seed": [0, 0]}, None, "twice"),
        ({"name": ["a"]}, None, "'name'"),
        ({"train.seed": [0]}, [{"head.name": "softmax"}], "not a sweep.grid or sweep.variants key"),
    ],
)
def test_bad_sweep_configs_are_user_errors(tmp_path, grid, exclude, fragment):
    path = write_sweep(tmp_path / "s.yaml", grid, exclude)
    with pytest.raises(UserError, match=fragment):
        sweep.load_sweep(path)


def test_a_grid_of_millions_of_runs_is_refused_before_it_is_built(tmp_path):
    grid = {
        "train.seed": list(range(300)),
        "data.seed": list(range(300)),
        "train.lr": [i / 1000 for i in range(1, 301)],
    }
    path = write_sweep(tmp_path / "s.yaml", grid)
    with pytest.raises(UserError) as caught:
        sweep.load_sweep(path)
    assert str(caught.value) == (
        f"the sweep in {path} has 27,000,000 runs (variants x sweep.grid, before sweep.exclude), more than the 10,000 "
        "a sweep may have; shorten the lists in sweep.grid or split it into several sweeps"
    )
    # Variants multiply too; the library's own entry point (a spec built in code) checks it as well.
    spec = sweep.SweepSpec(
        grid={"train.seed": list(range(1000))}, variants=[{"train.lr": i / 100} for i in range(1, 12)]
    )
    assert sweep.spec.count_runs(spec) == 11_000
    base, _ = sweep.load_sweep(write_sweep(tmp_path / "ok.yaml", {"train.seed": [0]}))
    with pytest.raises(UserError, match=r"^the sweep has 11,000 runs"):
        sweep.expand_grid(base, spec)


def test_overrides_change_the_base_before_the_variants_which_still_override_it(tmp_path):
    variants = [{"head.name": "softmax"}, {"head.name": "gumbel", "head.tau": 2}]
    path = write_sweep(tmp_path / "s.yaml", {"train.seed": [0]}, variants=variants, extra=["head.name=log_softmax"])
    notes: list[str] = []
    base, spec = sweep.load_sweep(path, ["model.name=timm:resnet18", "train.lr=0.2"], on_note=notes.append)
    assert base.model.name == "timm:resnet18" and base.train.lr == 0.2 and base.head.name == "log_softmax"
    assert notes == [f"model.widths from {path} does not apply to model.name=timm:resnet18 and was dropped"]
    runs = sweep.expand_grid(base, spec)
    assert [(r.config.model.name, r.config.head.name, r.config.train.lr) for r in runs] == [
        ("timm:resnet18", "softmax", 0.2),
        ("timm:resnet18", "gumbel", 0.2),
    ]
    # The sweep: section is the file's: --set changes the base experiment only.
    with pytest.raises(UserError, match=r"--set 'sweep\.grid\.train\.seed=\[1\]': --set changes the base experiment"):
        sweep.load_sweep(path, ["sweep.grid.train.seed=[1]"])
