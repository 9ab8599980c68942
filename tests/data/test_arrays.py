import io
import pickle
import warnings
import zipfile

import numpy as np
import pytest
import torch

from softmaxlab.config import DataConfig
from softmaxlab.data import load_data
from softmaxlab.errors import UserError


def arrays(n=60, h=8, w=8, c=3, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.integers(0, 256, (n, h, w, c), dtype=np.uint8), "y": np.arange(n) % k}


def save(tmp_path, **arrs):
    path = tmp_path / "data.npz"
    np.savez(path, **arrs)
    return path


def load(path, **kw):
    return load_data(DataConfig(name="npz", root=str(path), **{"image_size": 8, **kw}))


def test_npz_splits_and_layout(tmp_path):
    a = arrays()
    data = load(save(tmp_path, **a, classes=np.array(["ant", "bee", "cow"])))
    assert data.classes == ["ant", "bee", "cow"]
    # test_fraction 0.2 of 60 = 12, then val_fraction 0.1 of the 48 left ~ 5, stratified.
    assert (len(data.train), len(data.val), len(data.test)) == (43, 5, 12)
    assert torch.bincount(data.test.y).tolist() == [4, 4, 4]
    # NHWC in the file -> NCHW in memory, each image with its own label.
    x = torch.from_numpy(a["x"]).permute(0, 3, 1, 2)
    for split in (data.train, data.val, data.test):
        for img, label in zip(split.x[:5], split.y[:5], strict=True):
            i = next(i for i in range(60) if torch.equal(x[i], img))
            assert a["y"][i] == label


def test_npz_test_arrays_are_the_test_split(tmp_path):
    a, t = arrays(), arrays(n=9, seed=1)
    data = load(save(tmp_path, **a, x_test=t["x"], y_test=t["y"]))
    assert len(data.test) == 9 and len(data.train) + len(data.val) == 60
    assert torch.equal(data.test.x, torch.from_numpy(t["x"]).permute(0, 3, 1, 2))
    assert data.classes == ["0", "1", "2"]


def test_npz_grayscale_and_resize(tmp_path):
    a = arrays(h=12, w=12)
    data = load(save(tmp_path, x=a["x"][..., 0], y=a["y"]))
    assert data.image_shape == (1, 8, 8)


def test_npz_split_is_deterministic_from_data_seed(tmp_path):
    path = save(tmp_path, **arrays())
    a, b, c = load(path), load(path), load(path, seed=1)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.test.x, b.test.x)
    assert not torch.equal(a.test.x, c.test.x)


A = arrays()


@pytest.mark.parametrize("scale", [1.0, 1 / 255])
def test_float_images_on_either_scale_become_the_same_uint8(tmp_path, scale):
    a = arrays()
    want = load(save(tmp_path, **a)).train.x
    (tmp_path / "data.npz").unlink()
    got = load(save(tmp_path, x=a["x"].astype(np.float32) * np.float32(scale), y=a["y"])).train.x
    assert got.dtype == torch.uint8 and torch.equal(got, want)


@pytest.mark.parametrize(
    ("arrs", "error"),
    [
        ({"x": A["x"].astype(np.int32), "y": A["y"]}, r"array 'x' .* uint8 \(or float\) images .*got int32"),
        (
            {"x": A["x"] * np.float32(np.nan), "y": A["y"]},
            r"NaN or infinite pixels in 60 image\(s\), the first at index 0",
        ),
        ({"x": A["x"].astype(np.float32) * 2, "y": A["y"]}, r"float pixels in \[0, 510\]"),
        ({"x": A["x"][:, :, :, :, None], "y": A["y"]}, r"array 'x' .*\(N, H, W, C\), got uint8 \(60, 8, 8, 3, 1\)"),
        ({"x": A["x"], "y": A["y"][:50]}, r"array 'y' .*integer labels of shape \(60,\)"),
        ({"x": A["x"], "y": A["y"].astype(np.float32)}, r"array 'y' .*integer labels"),
        ({"x": A["x"]}, r"no array 'y'"),
        ({"x": A["x"], "y": A["y"], "x_val": A["x"]}, r"unexpected arrays \['x_val'\]"),
        ({**A, "x_test": A["x"][:, :4], "y_test": A["y"]}, r"array 'x_test' .*shape \(N, 8, 8, 3\) like x"),
        ({**A, "x_test": A["x"]}, r"both x_test and y_test"),
        ({**A, "classes": np.array(["a", "b"])}, r"array 'y' .*labels outside 0\.\.1"),
        ({**A, "classes": np.array([["a", "b", "c"]])}, r"array 'classes' .*strings of shape \(K,\)"),
        ({"x": A["x"], "y": np.zeros(60, int)}, r"single class"),
        ({**A, "classes": np.array(["a", "b", "c"], dtype=object)}, r"object array.*dtype=str"),
    ],
)
def test_npz_mismatches_are_user_errors(tmp_path, arrs, error):
    with pytest.raises(UserError, match=error):
        load(save(tmp_path, **arrs))


def test_npz_missing_or_unreadable_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"not a readable \.npz"):
        load(tmp_path / "bad.npz")
    with pytest.raises(UserError, match=r"data\.root is not set"):
        load_data(DataConfig(name="npz"))


def test_unset_image_size_keeps_the_stored_size(tmp_path):
    square = load(save(tmp_path, **arrays(h=12, w=12)), image_size=None)
    assert square.image_shape == (3, 12, 12)
    # Not square: squares of the shorter side, every split alike.
    (tmp_path / "data.npz").unlink()
    a = arrays(h=10, w=14)
    wide = load(save(tmp_path, **a, x_test=a["x"][:6], y_test=a["y"][:6]), image_size=None)
    assert wide.image_shape == (3, 10, 10) and wide.test.x.shape[1:] == (3, 10, 10)


def test_real_intel_arrays(files):
    path = files.shared / "intel64-train.npz"
    if not path.is_file():
        pytest.skip(f"real data not available: {path} is absent (../shared/data holds it on project machines)")
    data = load(path, image_size=64)
    assert data.classes == ["buildings", "forest", "glacier", "mountain", "sea", "street"]
    assert len(data.train) + len(data.val) + len(data.test) == 8741
    assert data.image_shape == (3, 64, 64)
    mean, _ = data.channel_stats()
    assert all(0.3 < m < 0.6 for m in mean)


# ---------------------------------------------------------------- files that lie or smuggle


def npy_bytes(array=None, header_shape=None, dtype=np.uint8):
    """The bytes of a .npy member: ``array`` as saved, or a header claiming ``header_shape`` before
    a few bytes of data."""
    buf = io.BytesIO()
    if array is not None:
        np.save(buf, array)
        return buf.getvalue()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": header_shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + bytes(64)


def zipped(tmp_path, members, compression=zipfile.ZIP_STORED):
    path = tmp_path / "hand.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about a name written twice
        with zipfile.ZipFile(path, "w", compression=compression) as z:
            for name, data in members:
                z.writestr(name, data)
    return path


XY = [("x.npy", npy_bytes(A["x"])), ("y.npy", npy_bytes(A["y"]))]


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
@pytest.mark.parametrize(
    ("shape", "dtype"), [((10**9, 64, 64, 3), np.uint8), ((60, 8, 8, 3), np.float64), ((-1, 8), np.uint8)]
)
def test_a_header_claiming_more_than_the_file_stores_is_refused_before_allocating(tmp_path, compression, shape, dtype):
    # numpy allocates what the header claims before reading: 12 TB for the first shape.
    path = zipped(tmp_path, [("x.npy", npy_bytes(header_shape=shape, dtype=dtype)), XY[1]], compression)
    with pytest.raises(UserError) as err:
        load(path)
    msg = str(err.value)
    assert "\n" not in msg and f"array 'x' in '{path}' claims shape {shape}" in msg
    assert "bytes of it; the file is truncated or was altered" in msg


@pytest.mark.parametrize(
    ("members", "error"),
    [
        ([*XY, ("classes", pickle.dumps(["a", "b", "c"]))], r"holds 'classes', which is not a NumPy array"),
        ([*XY, ("classes.npy", pickle.dumps(["a", "b", "c"]))], r"array 'classes' .* not a readable \.npy array"),
        ([*XY, ("classes.npy", b"\x93NUMPY\x09\x00" + bytes(30))], r"array 'classes' .* not a readable \.npy array"),
        ([*XY, ("classes.npy", npy_bytes(np.array(["a", "b"], dtype=object)))], r"object array 'classes'.*dtype=str"),
        ([*XY, XY[1]], r"stores 'y\.npy' twice"),
    ],
    ids=["raw pickle", "pickle named .npy", "unknown version", "object array", "member twice"],
)
def test_members_that_are_no_plain_arrays_are_refused(tmp_path, members, error):
    with pytest.raises(UserError, match=error):
        load(zipped(tmp_path, members))


@pytest.mark.parametrize("label", [2**40, 100_000])
def test_a_huge_label_without_class_names_is_refused(tmp_path, label):
    # The names "0".."K-1" of 2**40 classes would be built before anything else is checked.
    y = A["y"].copy()
    y[5] = label
    with pytest.raises(UserError, match=rf"array 'y' .*has the label {label:,}, .*more than the 100,000 allowed"):
        load(save(tmp_path, x=A["x"], y=y))


def test_a_huge_label_with_class_names_is_outside_them(tmp_path):
    y = A["y"].copy()
    y[5] = 2**40
    with pytest.raises(UserError, match=r"array 'y' .* labels outside 0\.\.2 \(there are 3 classes\)"):
        load(save(tmp_path, x=A["x"], y=y, classes=np.array(["a", "b", "c"])))


def test_a_class_name_given_twice_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"array 'classes' .* names the class 'bee' twice"):
        load(save(tmp_path, **A, classes=np.array(["ant", "bee", "bee"])))


def test_a_folder_in_place_of_the_npz_says_so(tmp_path):
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(UserError, match=r"npz file '.*d\.npz' is a directory, not a file"):
        load(tmp_path / "d.npz")
