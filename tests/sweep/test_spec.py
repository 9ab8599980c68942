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
