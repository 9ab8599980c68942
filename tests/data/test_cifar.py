import pickle
import struct
import urllib.error

import numpy as np
import pytest
import torch
import torchvision.datasets
from torchvision.datasets import utils as tv_utils

from softmaxlab.config import DataConfig, load_config
from softmaxlab.data import cifar, load_data
from softmaxlab.errors import UserError


def cfg(root, name="cifar10", **kw):
    return DataConfig(name=name, root=str(root), **kw)


def official(folder, name):
    with (folder / name).open("rb") as f:
        return pickle.load(f, encoding="latin1")


def test_cifar10_reads_official_files(files):
    root = files.cifar("cifar10")
    data = load_data(cfg(root, val_fraction=0.2))
    assert data.classes == files.cifar10_names
    assert (len(data.train), len(data.val), len(data.test)) == (80, 20, 20)
    assert data.image_shape == (3, 32, 32) and data.train.x.dtype == torch.uint8
    # The test split is the official test batch, in file order; rows are R, G, B planes.
    batch = official(root / "cifar-10-batches-py", "test_batch")
    assert torch.equal(data.test.x, torch.from_numpy(batch["data"].reshape(-1, 3, 32, 32)))
    assert data.test.y.tolist() == batch["labels"]
    # Validation is stratified: 2 of the 10 images of each class.
    assert torch.bincount(data.val.y, minlength=10).tolist() == [2] * 10
    assert data.coarse_of is None and data.train.coarse is None


def test_train_and_val_partition_the_training_batches(files):
    root = files.cifar("cifar10")
    data = load_data(cfg(root))
    folder = root / "cifar-10-batches-py"
    rows = np.concatenate([official(folder, f"data_batch_{i}")["data"] for i in range(1, 6)])
    everything = {bytes(r) for r in rows}
    seen = [bytes(img.flatten().numpy()) for split in (data.train, data.val) for img in split.x]
    assert len(seen) == 100 and set(seen) == everything


def test_validation_split_is_seeded_by_data_seed(files):
    root = files.cifar("cifar10")
    a, b, c = (load_data(cfg(root, seed=s)) for s in (0, 0, 1))
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)


def test_cifar100_fine_labels_carry_the_hierarchy(files):
    root = files.cifar("cifar100")
    data = load_data(cfg(root, "cifar100"))
    assert len(data.classes) == 100 and data.classes[3] == "fine03"
    assert data.coarse_classes == [f"coarse{c:02d}" for c in range(20)]
    assert data.coarse_of.tolist() == [files.coarse_of(k) for k in range(100)]
    for split in (data.train, data.val, data.test):
        assert torch.equal(split.coarse, data.coarse_of[split.y])
    assert len(data.train) + len(data.val) == 100 and len(data.test) == 20


def test_cifar100_coarse_labels_are_the_20_superclasses(files):
    root = files.cifar("cifar100")
    fine = load_data(cfg(root, "cifar100"))
    coarse = load_data(cfg(root, "cifar100", labels="coarse"))
    assert coarse.classes == fine.coarse_classes and coarse.num_classes == 20
    assert coarse.coarse_of is None and coarse.test.coarse is None
    assert torch.equal(coarse.test.y, fine.test.coarse)


def test_root_may_be_the_release_folder_itself(files):
    root = files.cifar("cifar10")
    data = load_data(cfg(root / "cifar-10-batches-py"))
    assert len(data.test) == 20


def test_image_size_resizes(files):
    root = files.cifar("cifar10")
    data = load_data(cfg(root, image_size=16))
    assert data.image_shape == (3, 16, 16) and data.test.x.dtype == torch.uint8
    assert load_data(cfg(root)).image_shape == (3, 32, 32)  # unset: as stored


def test_missing_root_names_the_command_that_fixes_it(tmp_path):
    root = tmp_path / "nothing here"
    with pytest.raises(UserError) as err:
        load_data(cfg(root))
    msg = str(err.value)
    assert "\n" not in msg and "cifar-10-batches-py" in msg
    assert msg.endswith(f"softmaxlab run --set data.name=cifar10 --set data.root='{root}' --set data.download=true")


def test_unset_root_names_the_command_that_fixes_it():
    with pytest.raises(UserError, match=r"data\.root is not set.*--set data\.name=cifar100 .*data\.download=true"):
        load_data(DataConfig(name="cifar100"))


def test_incomplete_release_names_the_missing_file(files):
    root = files.cifar("cifar10")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match=r"incomplete \(missing data_batch_3\).*data\.download=true"):
        load_data(cfg(root))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not a pickle at all", "not a readable pickle"),
        (b"", "not a readable pickle"),
        (pickle.dumps([1, 2, 3], protocol=2), "expected a dict"),
        (pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, protocol=2), r"\(N, 3072\)"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, protocol=2), "2 integer labels"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, protocol=2), r"outside 0\.\.9"),
    ],
)
def test_corrupt_file_is_a_user_error_naming_it(files, content, reason):
    root = files.cifar("cifar10")
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(content)
    with pytest.raises(UserError, match=rf"data_batch_2' is corrupt \(.*{reason}.*download it again"):
        load_data(cfg(root))


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('code ran')",))


def test_pickle_that_would_run_code_is_refused(files):
    root = files.cifar("cifar10")
    (root / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps({"label_names": _Boom()}, protocol=2))
    with pytest.raises(UserError, match="corrupt"):
        load_data(cfg(root))


def test_download_uses_torchvision_with_its_checksum(files, tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kw):
        calls.append((url, filename, md5))
        files.cifar("cifar100")  # what extracting the archive would leave behind
        (tmp_path / "cifar100-root" / "cifar-100-python").rename(tmp_path / "dl" / "cifar-100-python")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    data = load_data(cfg(tmp_path / "dl", "cifar100", download=True))
    tv = torchvision.datasets.CIFAR100
    assert calls == [(tv.url, tv.filename, tv.tgz_md5)]
    assert data.num_classes == 100
    load_data(cfg(tmp_path / "dl", "cifar100", download=True))
    assert len(calls) == 1  # present files are not downloaded again


def test_failed_download_is_a_user_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(UserError, match=r"downloading CIFAR-10 from https://.*failed.*by hand"):
        load_data(cfg(tmp_path / "dl", download=True))


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (["data.name=cifar10", "data.labels=coarse"], r"data\.labels.*applies to cifar100 only"),
        (["data.name=npz", "data.download=true"], r"data\.download.*applies to cifar10 and cifar100 only"),
        (["data.name=cifar100", "data.labels=medium"], r"data\.labels"),
    ],
)
def test_config_rejects_options_the_dataset_ignores(overrides, error):
    with pytest.raises(UserError, match=error):
        load_config(None, overrides)


def test_config_accepts_cifar_options():
    c = load_config(None, ["data.name=cifar100", "data.labels=coarse", "data.download=true", "data.root=/x"])
    assert (c.data.labels, c.data.download) == ("coarse", True)


def test_coarse_fix_command_keeps_the_coarse_labels(tmp_path):
    with pytest.raises(UserError, match=r"--set data\.name=cifar100 --set data\.labels=coarse .*download=true"):
        load_data(DataConfig(name="cifar100", labels="coarse", root=str(tmp_path / "none")))


# ---------------------------------------------------------------- pickles that claim more than they hold

# Protocol 4 opcodes with an 8-byte length: BINBYTES8, BINUNICODE8, BYTEARRAY8.
HUGE_LENGTHS = {
    name: b"\x80\x04" + op + struct.pack("<Q", 2**60) + b"abc."
    for name, op in (("BINBYTES8", b"\x8e"), ("BINUNICODE8", b"\x8d"), ("BYTEARRAY8", b"\x96"))
}


@pytest.mark.parametrize("content", list(HUGE_LENGTHS.values()), ids=list(HUGE_LENGTHS))
def test_a_pickle_claiming_a_huge_string_is_a_corrupt_file(files, content):
    # A few bytes asking the unpickler for 2**60 bytes: a MemoryError, not a one-line error, before.
    root = files.cifar("cifar10")
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(content)
    with pytest.raises(UserError, match=r"data_batch_2' is corrupt \(it declares an object larger than the memory\)"):
        load_data(cfg(root))


def test_a_file_larger_than_any_official_one_is_not_read(files, monkeypatch):
    root = files.cifar("cifar10")
    monkeypatch.setattr(cifar, "MAX_FILE_BYTES", 1000)
    monkeypatch.setattr(cifar, "_ArrayUnpickler", None)  # reading it at all would fail differently
    (root / "cifar-10-batches-py" / "batches.meta").write_bytes(bytes(2**20))
    with pytest.raises(UserError, match=r"batches\.meta' is corrupt \(1 MiB, larger than any official file\)"):
        load_data(cfg(root))


def test_a_folder_in_place_of_a_batch_says_so(files):
    root = files.cifar("cifar10")
    (root / "cifar-10-batches-py" / "data_batch_4").unlink()
    (root / "cifar-10-batches-py" / "data_batch_4").mkdir()
    with pytest.raises(UserError, match=r"CIFAR-10 file '.*data_batch_4' is a directory, not a file; download it"):
        load_data(cfg(root))
