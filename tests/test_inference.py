"""Evaluating and predicting with a trained run."""

import json
import shutil

import numpy as np
import pytest
import torch
from entmax import sparsemax

from softmaxlab import runs
from softmaxlab.config import load_config
from softmaxlab.data import load_data
from softmaxlab.errors import UserError
from softmaxlab.inference import (
    evaluate_run,
    load_trained_run,
    predict_images,
    read_image,
    visualize_run,
    write_evaluation,
)
from softmaxlab.metrics import apply_temperature
from softmaxlab.train import fit

from .conftest import TINY, tiny_config

SMALL = ["data.train_size=512", "data.val_size=64", "data.test_size=96"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return fit(tiny_config(*SMALL), tmp_path_factory.mktemp("inference") / "run")


def save_npz(path, data, classes, relabel=None):
    """The shapes splits as an npz file (x_test = the test images), labels renamed by ``relabel``."""

    def nhwc(split):
        return split.x.permute(0, 2, 3, 1).numpy()

    def labels(split):
        return (relabel[split.y] if relabel is not None else split.y).numpy()

    np.savez(
        path,
        x=nhwc(data.train),
        y=labels(data.train),
        x_test=nhwc(data.test),
        y_test=labels(data.test),
        classes=np.array(classes, dtype=str),
    )
    return path


def test_evaluate_on_the_run_dataset_reproduces_the_summary(run):
    result = evaluate_run(run.run_dir, "shapes", device="cpu")
    test = run.summary["test"]
    m = result["metrics"]
    assert result["images"] == 96 and result["split"] == "test" and result["temperature"] == run.summary["temperature"]
    assert m["confusion_matrix"] == test["confusion_matrix"] and m["accuracy"] == test["accuracy"]
    scalars = ("nll", "brier", "ece", "mce", "entropy", "aurc", "classwise_ece")
    for key in (*scalars, "ece_after_temperature", "nll_after_temperature"):
        assert m[key] == pytest.approx(test[key], rel=1e-4, abs=1e-6), key
    assert m["per_class"] == test["per_class"]
    everything = evaluate_run(run.run_dir, "shapes", split="all", device="cpu")
    assert everything["images"] == 512 + 64 + 96


def test_evaluate_writes_the_predictions_beside_its_json_as_training_did(run, tmp_path):
    result = evaluate_run(run.run_dir, "shapes", device="cpu", keep_predictions=True)
    path = write_evaluation(result, tmp_path / "e.json")
    assert json.loads(path.read_text())["predictions_file"] == "e.predictions.npz"
    mine = runs.read_predictions(tmp_path, "e.predictions.npz")
    trained = runs.read_predictions(run.run_dir)  # written by fit for the same test split
    np.testing.assert_allclose(mine["probs"], trained["probs"], atol=1e-6)
    assert (mine["targets"] == trained["targets"]).all() and mine["index"].tolist() == list(range(96))


def test_evaluate_maps_classes_by_name(run, tmp_path):
    data = load_data(tiny_config(*SMALL).data)
    k = data.num_classes
    reverse = torch.arange(k - 1, -1, -1)  # label i of the file is class k-1-i of the run
    path = save_npz(tmp_path / "reversed.npz", data, data.classes[::-1], relabel=reverse)
    result = evaluate_run(run.run_dir, f"npz:{path}", device="cpu")
    assert result["dataset"] == "npz" and result["images"] == 96
    assert result["metrics"]["confusion_matrix"] == run.summary["test"]["confusion_matrix"]


def test_evaluate_refuses_other_class_names_listing_the_difference(run, tmp_path):
    data = load_data(tiny_config(*SMALL).data)
    path = save_npz(tmp_path / "other.npz", data, [*data.classes[:-1], "zebra"])
    with pytest.raises(UserError, match=f"missing '{data.classes[-1]}'; not in the run 'zebra'"):
        evaluate_run(run.run_dir, f"npz:{path}", device="cpu")
    with pytest.raises(UserError, match="unknown split 'train'"):
        evaluate_run(run.run_dir, "shapes", split="train")


def test_predict_gives_temperature_scaled_top_k(run, tmp_path):
    from PIL import Image

    images = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        images.append(tmp_path / f"{i}.png")
        Image.new("RGB", (20, 20), colour).save(images[-1])
    result = predict_images(run.run_dir, images, top_k=10)
    t = run.summary["temperature"]
    assert result["temperature"] == t and result["top_k"] == 4  # capped at the class count
    loaded = load_trained_run(run.run_dir)
    from softmaxlab.inference import model_input

    with torch.no_grad():
        x = torch.cat([model_input(p, 16, loaded.normalization) for p in images])
        expected = apply_temperature(loaded.model.head.probs(loaded.model(x)), t)
    for item, row in zip(result["predictions"], expected, strict=True):
        probs = [c["probability"] for c in item["top"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert [c["probability"] for c in sorted(item["top"], key=lambda c: c["index"])] == pytest.approx(row.tolist())
        assert all(c["class"] == loaded.classes[c["index"]] for c in item["top"])


def test_predict_walks_folders_in_batches_and_writes_a_csv(run, tmp_path, monkeypatch):
    import csv

    from PIL import Image
    from typer.testing import CliRunner

    from softmaxlab import inference
    from softmaxlab.cli import app

    photos = tmp_path / "photos"
    for i, name in enumerate(["a.png", "sub/b.JPG", "sub/deeper/c.jpeg", ".hidden/d.png", "notes.txt"]):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("txt"):
            (photos / name).write_text("not an image")
        else:
            kind = "PNG" if "png" in name else "JPEG"
            Image.new("RGB", (20, 20), (40 * i, 200 - 40 * i, 90)).save(photos / name, kind)
    single = _image(tmp_path)
    before = sorted((p.relative_to(photos), p.stat().st_mtime_ns) for p in photos.rglob("*"))
    seen = []
    monkeypatch.setattr(inference, "PROGRESS_FROM", 2)

    class Counting(inference.CountProgress):
        def advance(self, count=1):
            seen.append(count)

    def in_pairs(run_dir):  # the run's eval_batch_size, 2 here: batches of 2, 2
        loaded = load_trained_run(run_dir)
        loaded.cfg.train.eval_batch_size = 2
        return loaded

    monkeypatch.setattr(inference, "load_trained_run", in_pairs)
    result = predict_images(run.run_dir, [photos, single], top_k=2, progress=Counting())
    monkeypatch.undo()
    names = [item["image"] for item in result["predictions"]]
    assert names == [str(photos / "a.png"), str(photos / "sub/b.JPG"), str(photos / "sub/deeper/c.jpeg"), str(single)]
    assert seen == [2, 2]
    whole = predict_images(run.run_dir, names, top_k=2)  # one batch: the same numbers

    def numbers(res):
        return [(c["index"], c["probability"]) for item in res["predictions"] for c in item["top"]]

    assert [i for i, _ in numbers(whole)] == [i for i, _ in numbers(result)]
    assert [p for _, p in numbers(whole)] == pytest.approx([p for _, p in numbers(result)], abs=1e-6)
    out = tmp_path / "p.csv"
    cli = CliRunner().invoke(app, ["predict", str(run.run_dir), str(photos), "--top-k", "2", "--csv", str(out)])
    assert cli.exit_code == 0 and "wrote the predictions of 3 images" in cli.stdout
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["image", "class_1", "probability_1", "class_2", "probability_2"] and len(rows) == 4
    assert rows[1][0] == str(photos / "a.png") and rows[1][1] == result["predictions"][0]["top"][0]["class"]
    assert float(rows[1][2]) == pytest.approx(result["predictions"][0]["top"][0]["probability"], rel=1e-5)
    again = CliRunner().invoke(app, ["predict", str(run.run_dir), str(photos), "--csv", str(out), "--overwrite"])
    assert again.exit_code == 0 and len(next(csv.reader(out.open()))) == 9  # top 5 of 4 classes: capped at 4
    assert sorted((p.relative_to(photos), p.stat().st_mtime_ns) for p in photos.rglob("*")) == before


def test_predict_rescales_a_sparse_head_on_its_scores(tmp_path):
    sparse = fit(tiny_config(*SMALL, "train.epochs=1", "head.name=sparsemax"), tmp_path / "sparse")
    t = sparse.summary["temperature"]
    assert t > 0 and sparse.summary["temperature_note"].startswith("sparsemax: fitted on the validation split")
    result = predict_images(sparse.run_dir, [_image(tmp_path)], top_k=4)
    loaded = load_trained_run(sparse.run_dir)
    from softmaxlab.inference import model_input

    with torch.no_grad():
        z = loaded.model(model_input(_image(tmp_path), 16, loaded.normalization))
    expected = sparsemax(z / t, dim=-1)[0]  # sparsemax(z / T), not softmax(log p / T)
    got = sorted(result["predictions"][0]["top"], key=lambda c: c["index"])
    assert [c["probability"] for c in got] == pytest.approx(expected.tolist(), abs=1e-6)


def test_predict_without_a_summary_uses_the_head_probabilities(run, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run.run_dir, unfinished)
    (unfinished / "summary.json").unlink()
    result = predict_images(unfinished, [_image(tmp_path)], top_k=1)
    assert result["temperature"] is None and "did not finish" in result["temperature_note"]
    (unfinished / "summary.json").write_text(json.dumps({"status": "finished", "temperature": -1}))
    with pytest.raises(UserError, match="not a positive number"):
        predict_images(unfinished, [_image(tmp_path)])


def _image(tmp_path):
    from PIL import Image

    path = tmp_path / "img.png"
    Image.new("RGB", (16, 16), (0, 128, 0)).save(path)
    return path


def test_data_location_is_not_carried_to_another_kind_of_dataset(tmp_path):
    from softmaxlab.config import load_config
    from softmaxlab.inference import data_config

    run_cfg = load_config(None, ["data.name=npz", f"data.root={tmp_path / 'a.npz'}", "data.image_size=16"])
    assert data_config(run_cfg, "cifar10").data.root is None  # not the npz file's path
    assert data_config(run_cfg, f"npz:{tmp_path / 'b.npz'}").data.root == str(tmp_path / "b.npz")
    assert data_config(run_cfg, "cifar10").data.image_size == 16  # what the model needs is kept


def test_read_image_resizes_and_rejects_bad_files(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.new("RGB", (30, 20), (255, 0, 0)).save(path)
    x = read_image(path, 16, 3)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.uint8
    assert x[0, 0].min() == 255 and x[0, 1].max() == 0
    assert read_image(path, 8, 1).shape == (1, 1, 8, 8)
    with pytest.raises(UserError, match="does not exist"):
        read_image(tmp_path / "none.png", 16, 3)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read"):
        read_image(tmp_path / "bad.png", 16, 3)


# --------------------------------------------------------------------------- visualize


def test_visualize_draws_the_maps_of_each_block(run, tmp_path):
    from PIL import Image

    image = tmp_path / "pattern.png"
    pattern = np.zeros((16, 16, 3), dtype=np.uint8)
    pattern[4:12, 4:12] = (220, 40, 40)
    pattern[::3] = 255
    Image.fromarray(pattern).save(image)
    path = visualize_run(run.run_dir, image, tmp_path / "maps.png", channels=4)
    drawn = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(drawn, axis=0)) > 20  # maps in many colours, not a blank page


#: A factory file whose network exposes its stage as ``blocks`` only once the user has added
#: them (here: once the file ``stages`` exists beside it), and one whose stages output vectors.
STAGELESS = """
from pathlib import Path

from torch import nn


def make():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if (Path(__file__).parent / "stages").exists():
        net.blocks = [net[1]]  # a plain list: the state dict, and so the trained weights, stay as they are
    return net


def vectors():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 8), nn.ReLU())
    net.blocks = [net[4]]  # a stage whose output is (B, 8): no map to draw
    return net
"""


def factory_run(tmp_path, factory):
    """A 1-epoch run of ``factory`` in :data:`STAGELESS` (16 px shapes)."""
    (tmp_path / "nets.py").write_text(STAGELESS)
    sets = [s for s in TINY if not s.startswith("model.widths")] + SMALL + ["train.epochs=1"]
    return fit(load_config(None, [*sets, f"model.name={tmp_path / 'nets.py'}:{factory}"]), tmp_path / factory).run_dir


def test_visualize_a_model_without_stages_says_how_to_name_them_and_writes_nothing(tmp_path):
    run_dir = factory_run(tmp_path, "make")
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    with pytest.raises(UserError, match=r"exposes no stages.*`blocks` attribute, a plain list of its stage modules"):
        visualize_run(run_dir, _image(tmp_path))
    with pytest.raises(UserError, match="exposes no stages"):
        visualize_run(run_dir, _image(tmp_path), tmp_path / "maps.png")
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before and not (tmp_path / "maps.png").exists()
    (tmp_path / "stages").touch()  # the user follows the hint: the same run now has maps
    assert visualize_run(run_dir, _image(tmp_path), tmp_path / "maps.png").stat().st_size > 0


def test_visualize_a_model_whose_stages_output_no_maps_writes_nothing(tmp_path):
    run_dir = factory_run(tmp_path, "vectors")
    with pytest.raises(UserError, match=r"output no \(C, H, W\) feature maps"):
        visualize_run(run_dir, _image(tmp_path), tmp_path / "maps.png")
    assert not (tmp_path / "maps.png").exists()


def test_a_run_with_eval_flip_is_evaluated_and_predicted_on_flip_averaged_scores(tmp_path):
    from PIL import Image

    from softmaxlab.inference import model_input

    flipped = fit(tiny_config(*SMALL, "train.epochs=1", "train.eval_flip=true"), tmp_path / "flip")
    result = evaluate_run(flipped.run_dir, "shapes", device="cpu")
    assert result["metrics"]["accuracy"] == pytest.approx(flipped.summary["test"]["accuracy"])
    path = tmp_path / "half.png"  # left half red, right half green: not its own mirror image
    Image.fromarray(
        np.concatenate([np.full((16, 8, 3), (255, 0, 0)), np.full((16, 8, 3), (0, 255, 0))], 1).astype(np.uint8)
    ).save(path)
    got = predict_images(flipped.run_dir, [path], top_k=4)
    loaded = load_trained_run(flipped.run_dir)
    x = model_input(path, 16, loaded.normalization)
    with torch.no_grad():
        z, z_flip = loaded.model(x), loaded.model(x.flip(-1))
    assert not torch.allclose(z, z_flip, atol=1e-4)
    t = flipped.summary["temperature"]
    expected = torch.softmax((z + z_flip) / 2 / t, dim=-1)[0]
    top = sorted(got["predictions"][0]["top"], key=lambda c: c["index"])
    assert [c["probability"] for c in top] == pytest.approx(expected.tolist(), abs=1e-5)
