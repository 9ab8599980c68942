import errno
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from softmaxlab.config import DataConfig, load_config
from softmaxlab.data import imagefolder, load_data, user_cache_dir
from softmaxlab.errors import UserError


def load(root, **kw):
    return load_data(DataConfig(name="imagefolder", root=str(root), **{"image_size": 8, **kw}))


def cache_of(root):
    """The default cache folder of the image folder ``root`` (under the test's XDG_CACHE_HOME)."""
    return imagefolder.default_cache_folder(root)


def no_decoding(monkeypatch):
    def fail(path, size):
        raise AssertionError(f"decoded {path} although the cache should hold it")

    monkeypatch.setattr(imagefolder, "decode_image", fail)


def test_flat_tree_is_split_deterministically(tmp_path, files):
    files.tree(tmp_path / "tree", per_class=10)
    data = load(tmp_path / "tree")
    assert data.classes == ["cat", "dog", "eel"]
    assert (len(data.train), len(data.val), len(data.test)) == (22, 2, 6)
    assert torch.bincount(data.test.y).tolist() == [2, 2, 2]
    assert data.image_shape == (3, 8, 8) and data.train.x.dtype == torch.uint8
    # Each image keeps its class colour (red, green, blue dominant) after resizing.
    for split in (data.train, data.val, data.test):
        dominant = split.x.float().mean(dim=(2, 3)).argmax(dim=1)
        assert torch.equal(dominant, split.y)
    again = load(tmp_path / "tree")
    assert torch.equal(again.test.x, data.test.x) and torch.equal(again.val.y, data.val.y)


def test_image_size_resizes_and_grayscale_becomes_rgb(tmp_path, files):
    files.tree(tmp_path / "tree")
    files.image(tmp_path / "tree" / "cat" / "grey.png", (90, 90, 90), size=(31, 17), mode="L")
    data = load(tmp_path / "tree", image_size=12)
    assert data.image_shape == (3, 12, 12)


def test_unset_image_size_is_64_px(tmp_path, files):
    # The images of a tree differ in size, so unset means the folder default, not any one image's size.
    files.tree(tmp_path / "tree", per_class=4)
    files.image(tmp_path / "tree" / "cat" / "big.png", (200, 10, 10), size=(90, 70))
    assert imagefolder.DEFAULT_SIZE == 64
    assert load(tmp_path / "tree", image_size=None).image_shape == (3, 64, 64)


def test_train_test_layout(tmp_path, files):
    files.tree(tmp_path / "t" / "train", per_class=6)
    files.tree(tmp_path / "t" / "test", per_class=2)
    data = load(tmp_path / "t")
    assert len(data.test) == 6 and len(data.train) + len(data.val) == 18
    assert torch.bincount(data.test.y).tolist() == [2, 2, 2]


def test_train_val_test_layout(tmp_path, files):
    for split, n in (("train", 4), ("val", 3), ("test", 2)):
        files.tree(tmp_path / "t" / split, per_class=n)
    data = load(tmp_path / "t")
    assert (len(data.train), len(data.val), len(data.test)) == (12, 9, 6)


def test_train_folder_alone_gets_a_carved_test_split(tmp_path, files):
    files.tree(tmp_path / "t" / "train", per_class=10)
    data = load(tmp_path / "t")
    assert data.classes == ["cat", "dog", "eel"] and len(data.test) == 6


def test_kaggle_intel_layout(tmp_path, files):
    files.tree(tmp_path / "intel" / "seg_train" / "seg_train", per_class=6)
    files.tree(tmp_path / "intel" / "seg_test" / "seg_test", per_class=1)
    files.image(tmp_path / "intel" / "seg_pred" / "seg_pred" / "1.jpg", (1, 2, 3))  # unlabelled: ignored
    data = load(tmp_path / "intel")
    assert data.classes == ["cat", "dog", "eel"]
    assert len(data.test) == 3 and len(data.train) + len(data.val) == 18


def test_test_folder_with_an_unknown_class_is_refused(tmp_path, files):
    files.tree(tmp_path / "t" / "train", classes=("cat", "dog"))
    files.tree(tmp_path / "t" / "test", classes=("cat", "eel"))
    with pytest.raises(UserError, match=r"class folders that the training folder .* lacks: eel"):
        load(tmp_path / "t")


def test_non_images_and_hidden_entries_are_ignored(tmp_path, files):
    files.tree(tmp_path / "tree")
    (tmp_path / "tree" / "cat" / "notes.txt").write_text("hello")
    (tmp_path / "tree" / "README.md").write_text("top-level files are not classes")
    files.image(tmp_path / "tree" / ".hidden" / "0.png", (0, 0, 0))
    files.image(tmp_path / "tree" / "dog" / ".thumb.png", (0, 0, 0))
    files.image(tmp_path / "tree" / "dog" / "nested" / "deep.png", (30, 200, 30))
    tree = imagefolder.scan(tmp_path / "tree")
    assert tree.classes == ["cat", "dog", "eel"] and len(tree.files) == 16
    assert "dog/nested/deep.png" in tree.files


def test_second_load_reads_the_cache_without_decoding(tmp_path, files, monkeypatch):
    files.tree(tmp_path / "tree")
    first = load(tmp_path / "tree")
    cache = cache_of(tmp_path / "tree")
    index = json.loads(next(cache.glob("index-*.json")).read_text())
    assert index["image_size"] == 8 and len(index["files"]) == 15 and index["bad"] == []
    assert np.load(next(cache.glob("images-*.npy")), mmap_mode="r").shape == (15, 3, 8, 8)
    no_decoding(monkeypatch)
    second = load(tmp_path / "tree")
    for a, b in ((first.train, second.train), (first.val, second.val), (first.test, second.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_cache_is_rebuilt_when_a_file_changes_and_the_stale_one_removed(tmp_path, files):
    files.tree(tmp_path / "tree")
    load(tmp_path / "tree")
    cache = cache_of(tmp_path / "tree")
    old = {p.name for p in cache.iterdir()}
    changed = tmp_path / "tree" / "cat" / "00.png"
    files.image(changed, (0, 0, 0))  # same size on disk is possible: the mtime still differs
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load(tmp_path / "tree")
    new = {p.name for p in cache.iterdir()}
    assert len(new) == 2 and not (new & old)


def test_a_new_image_size_gets_its_own_cache(tmp_path, files, monkeypatch):
    files.tree(tmp_path / "tree")
    load(tmp_path / "tree", image_size=8)
    load(tmp_path / "tree", image_size=10)
    assert len(list(cache_of(tmp_path / "tree").glob("images-*.npy"))) == 2
    no_decoding(monkeypatch)
    assert load(tmp_path / "tree", image_size=10).image_shape == (3, 10, 10)


def read_only(root, on=True):
    """Folders 0555 and files 0444 (or back to 0755 / 0644). As root the process could write there
    anyway, which is why the tests compare listings instead of relying on a PermissionError."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444 if on else 0o644)
        os.chmod(dirpath, 0o555 if on else 0o755)


def test_the_cache_goes_to_the_user_cache_folder_and_nothing_into_the_image_folder(tmp_path, files, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    files.tree(tmp_path / "tree")
    before = files.listing(tmp_path / "tree")
    read_only(tmp_path / "tree")
    try:
        first = load(tmp_path / "tree")
        second = load(tmp_path / "tree")
    finally:
        read_only(tmp_path / "tree", on=False)
    assert files.listing(tmp_path / "tree") == before
    folder = cache_of(tmp_path / "tree")
    assert folder.parent == tmp_path / "xdg" / "softmaxlab" / "imagefolder"
    assert re.fullmatch("[0-9a-f]{16}", folder.name)
    assert json.loads(next(folder.glob("index-*.json")).read_text())["root"] == str((tmp_path / "tree").resolve())
    # The run that filled the cache says where and how big (15 images of 3 x 8 x 8 bytes); a hit says nothing.
    assert first.notes == [f"cached 15 decoded images of 8 px in {str(folder)!r} (2.9 kB)"]
    assert second.notes == []


def test_without_xdg_cache_home_the_cache_is_under_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for xdg in (None, "", "relative/cache"):  # unset, empty or relative: ignored, as the XDG spec asks
        if xdg is None:
            monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        else:
            monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        assert user_cache_dir() == tmp_path / "home" / ".cache" / "softmaxlab"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "softmaxlab"


def test_cache_dir_overrides_the_user_cache_folder(tmp_path, files):
    files.tree(tmp_path / "tree")
    before = files.listing(tmp_path / "tree")
    data = load(tmp_path / "tree", cache_dir=str(tmp_path / "elsewhere"))
    assert list((tmp_path / "elsewhere").glob("index-*.json")) and list((tmp_path / "elsewhere").glob("images-*.npy"))
    assert not cache_of(tmp_path / "tree").exists() and files.listing(tmp_path / "tree") == before
    assert str(tmp_path / "elsewhere") in data.notes[0]


def test_a_user_cache_folder_inside_the_image_folder_is_refused(tmp_path, files, monkeypatch):
    files.tree(tmp_path / "tree")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "tree" / ".cache"))
    with pytest.raises(UserError, match=r"lies inside the image folder .*never written to; set data\.cache_dir"):
        load(tmp_path / "tree")
    assert not (tmp_path / "tree" / ".cache").exists()


def test_two_folders_with_the_same_listing_never_share_a_cache(tmp_path, files):
    # Same names, sizes and modification times (copy2 keeps them), other pixels: only the path tells them apart.
    files.tree(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for path in (tmp_path / "b").rglob("*.png"):
        st = path.stat()
        img = np.asarray(Image.open(path)).copy()
        Image.fromarray(255 - img).save(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    tree_a, tree_b = imagefolder.scan(tmp_path / "a"), imagefolder.scan(tmp_path / "b")
    assert tree_a.files == tree_b.files and imagefolder.cache_key(tree_a, 8) != imagefolder.cache_key(tree_b, 8)
    shared = str(tmp_path / "cache")
    a, b = load(tmp_path / "a", cache_dir=shared), load(tmp_path / "b", cache_dir=shared)
    assert len(list((tmp_path / "cache").glob("images-*.npy"))) == 2
    assert not torch.equal(a.train.x, b.train.x)
    assert torch.equal(load(tmp_path / "a", cache_dir=shared).train.x, a.train.x)  # each still finds its own


def counting_decodes(monkeypatch):
    """A list that grows by one path per decoded image."""
    decoded, real = [], imagefolder.decode_image

    def decode(path, size):
        decoded.append(path)
        return real(path, size)

    monkeypatch.setattr(imagefolder, "decode_image", decode)
    return decoded


def touch(path, files):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # explicit: mtime clocks can be coarse


def replace(path, files):
    files.image(path.with_name("new.tmp.png"), (0, 0, 0), size=(9, 9))
    os.replace(path.with_name("new.tmp.png"), path)


@pytest.mark.parametrize("change", [touch, replace])
def test_a_touched_or_replaced_image_is_decoded_again(tmp_path, files, monkeypatch, change):
    files.tree(tmp_path / "tree")
    decoded = counting_decodes(monkeypatch)
    load(tmp_path / "tree")
    load(tmp_path / "tree")
    assert len(decoded) == 15  # the second load was a hit
    change(tmp_path / "tree" / "cat" / "00.png", files)
    data = load(tmp_path / "tree")
    assert len(decoded) == 30 and data.notes  # decoded again, and said so
    assert len(list(cache_of(tmp_path / "tree").glob("images-*.npy"))) == 1  # the stale cache is gone
    if change is replace:  # the new pixels, not the cached old ones: one dark image among the red cats
        cats = torch.cat([data.train.x[data.train.y == 0], data.val.x[data.val.y == 0], data.test.x[data.test.y == 0]])
        assert (cats[:, 0].float().mean(dim=(1, 2)) < 100).sum() == 1


def test_two_processes_filling_the_same_cache_both_succeed(tmp_path, files, monkeypatch):
    # Another process (a sweep's other worker) fills the same cache while this one decodes: each writes
    # its own temporary file and renames it into place, so both succeed and one whole cache remains.
    files.tree(tmp_path / "tree")
    real, nested = imagefolder.decode_tree, []

    def decode_while_another_fills(tree, size, out, workers=None):
        if not nested:
            nested.append(None)  # the other process decodes plainly
            nested[0] = load(tmp_path / "tree")  # from start to end, while this one has not renamed yet
        return real(tree, size, out, workers)

    monkeypatch.setattr(imagefolder, "decode_tree", decode_while_another_fills)
    mine = load(tmp_path / "tree")
    assert torch.equal(mine.train.x, nested[0].train.x) and torch.equal(mine.test.x, nested[0].test.x)
    names = sorted(p.name for p in cache_of(tmp_path / "tree").iterdir())
    assert len(names) == 2 and names[0].startswith("images-") and names[1].startswith("index-"), names
    no_decoding(monkeypatch)
    assert torch.equal(load(tmp_path / "tree").train.x, mine.train.x)


def test_corrupt_files_are_named_or_skipped(tmp_path, files, monkeypatch):
    files.tree(tmp_path / "tree")
    (tmp_path / "tree" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tmp_path / "tree" / "eel" / "empty.png").write_bytes(b"")
    with pytest.raises(
        UserError, match=r"2 unreadable image file\(s\) .*dog/broken\.jpg .*eel/empty\.png.*skip_corrupt"
    ):
        load(tmp_path / "tree")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image file\(s\).*dog/broken\.jpg"):
        data = load(tmp_path / "tree", skip_corrupt=True)
    assert len(data.train) + len(data.val) + len(data.test) == 15
    no_decoding(monkeypatch)  # the cache remembers the bad files, both ways
    with pytest.raises(UserError, match="unreadable"):
        load(tmp_path / "tree")
    with pytest.warns(UserWarning, match="skipped 2"):
        load(tmp_path / "tree", skip_corrupt=True)


def test_truncated_jpeg_is_unreadable(tmp_path, files):
    files.tree(tmp_path / "tree")
    good = (tmp_path / "tree" / "cat" / "01.jpg").read_bytes()
    (tmp_path / "tree" / "cat" / "01.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match=r"1 unreadable image file\(s\).*cat/01\.jpg"):
        load(tmp_path / "tree")


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda root, files: None, r"does not exist"),
        (lambda root, files: root.mkdir(), r"no class folders"),
        (lambda root, files: files.tree(root, classes=("cat",)), r"single class folder \(cat\)"),
        (lambda root, files: (files.tree(root), (root / "fox").mkdir()), r"class folder .*fox' holds no images"),
        (
            lambda root, files: (root / "cat").mkdir(parents=True) or (root / "cat" / "a.txt").write_text("x"),
            "no images",
        ),
    ],
)
def test_bad_trees_are_user_errors(tmp_path, files, make, error):
    make(tmp_path / "tree", files)
    with pytest.raises(UserError, match=error):
        load(tmp_path / "tree")


def test_parallel_decoding_matches_sequential(tmp_path, files):
    files.tree(tmp_path / "tree", per_class=7)
    tree = imagefolder.scan(tmp_path / "tree")
    one, many = (np.zeros((21, 3, 8, 8), np.uint8) for _ in range(2))
    assert imagefolder.decode_tree(tree, 8, one, workers=1) == imagefolder.decode_tree(tree, 8, many, workers=4) == []
    assert np.array_equal(one, many) and one.any()


def test_config_options_only_for_imagefolder():
    with pytest.raises(UserError, match=r"data\.skip_corrupt.*applies to imagefolder only"):
        load_config(None, ["data.name=npz", "data.skip_corrupt=true"])
    cfg = load_config(None, ["data.name=imagefolder", "data.skip_corrupt=true", "data.cache_dir=/tmp/c"])
    assert cfg.data.skip_corrupt and cfg.data.cache_dir == "/tmp/c"


def test_real_intel_jpeg_sample(tmp_path, files):
    root = files.shared / "intel-jpeg-sample"
    if not root.is_dir():
        pytest.skip(f"real data not available: {root} is absent (../shared/data holds it on project machines)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unreadable files, no cache fallback
        data = load(root, image_size=32, cache_dir=str(tmp_path / "cache"))
    assert data.classes == ["buildings", "forest", "glacier", "mountain", "sea", "street"]
    assert len(data.train) + len(data.val) + len(data.test) == 180
    assert torch.bincount(data.test.y).tolist() == [6] * 6
    assert data.image_shape == (3, 32, 32) and data.train.x.float().std() > 30


def test_relative_root(tmp_path, files, monkeypatch):
    files.tree(tmp_path / "tree")
    monkeypatch.chdir(tmp_path / "tree")
    data = load(".")
    assert data.classes == ["cat", "dog", "eel"] and len(data.train) + len(data.val) + len(data.test) == 15
    assert imagefolder.scan(Path(".")).files[0] == "cat/00.png"


def test_progress_bar_on_a_terminal(tmp_path, files, monkeypatch):
    files.tree(tmp_path / "tree")
    monkeypatch.setattr(imagefolder.sys.stderr, "isatty", lambda: True, raising=False)
    tree = imagefolder.scan(tmp_path / "tree")
    out = np.zeros((15, 3, 8, 8), np.uint8)
    assert imagefolder.decode_tree(tree, 8, out) == [] and out.any()


# ---------------------------------------------------------------- a full disk while building the cache


def no_tmp_left(tree_root):
    cache = cache_of(tree_root)
    return not [p.name for p in cache.iterdir() if p.name.endswith(".tmp")] if cache.exists() else True


def test_full_disk_reserving_the_cache_is_a_user_error_naming_it(tmp_path, files, monkeypatch):
    # A write into a memory map that finds the disk full is SIGBUS, not an OSError: the space is
    # reserved first, where a full disk is a plain ENOSPC.
    files.tree(tmp_path / "tree")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(imagefolder.os, "posix_fallocate", full)
    with pytest.raises(UserError) as err:
        load(tmp_path / "tree")
    msg = str(err.value)
    cache = cache_of(tmp_path / "tree")
    assert "\n" not in msg and str(cache) in msg and "images-" in msg
    assert "the disk is full (No space left on device)" in msg and "free space" in msg and "data.cache_dir" in msg
    assert no_tmp_left(tmp_path / "tree") and not list(cache.glob("*.npy")) and not list(cache.glob("*.json"))


def test_an_os_error_while_decoding_into_the_cache_leaves_nothing(tmp_path, files, monkeypatch):
    files.tree(tmp_path / "tree")

    def failing(tree, size, out, workers=None):
        out[:2] = 7  # part of the cache written, then the device fails
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(imagefolder, "decode_tree", failing)
    with pytest.raises(UserError, match=r"cannot write the image cache '.*images-.*\.npy': the write failed \(Input"):
        load(tmp_path / "tree")
    assert no_tmp_left(tmp_path / "tree")
    assert not list(cache_of(tmp_path / "tree").glob("*-*.*"))


def test_a_file_system_without_fallocate_gets_zeros_written(tmp_path, files, monkeypatch):
    files.tree(tmp_path / "tree")
    want = load(tmp_path / "tree", cache_dir=str(tmp_path / "a"))

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(imagefolder.os, "posix_fallocate", unsupported)
    got = load(tmp_path / "tree", cache_dir=str(tmp_path / "b"))
    assert torch.equal(got.train.x, want.train.x) and torch.equal(got.test.x, want.test.x)
    no_decoding(monkeypatch)
    assert torch.equal(load(tmp_path / "tree", cache_dir=str(tmp_path / "b")).train.x, want.train.x)


# ---------------------------------------------------------------- links, pipes and folders in the tree


def test_a_link_loop_is_refused_naming_it(tmp_path, files):
    files.tree(tmp_path / "tree", per_class=4)
    (tmp_path / "tree" / "cat" / "loop").symlink_to(".")  # os.walk(followlinks) listed 12 images as 252
    with pytest.raises(UserError) as err:
        imagefolder.scan(tmp_path / "tree")
    msg = str(err.value)
    assert "\n" not in msg and f"{tmp_path / 'tree' / 'cat' / 'loop'}' is the same folder as" in msg
    assert "counted twice; remove the link" in msg


@pytest.mark.parametrize("target", ["../dog", "..", "../.."])
def test_a_link_to_another_class_or_up_the_tree_is_refused(tmp_path, files, target):
    # ../dog would list the dog images as cats too; .. and ../.. lead back into every class.
    files.tree(tmp_path / "tree", per_class=2)
    (tmp_path / "tree" / "cat" / "more").symlink_to(target)
    with pytest.raises(UserError, match=r"cat/more' is the same folder as .*counted twice"):
        imagefolder.scan(tmp_path / "tree")


def test_a_link_from_the_test_split_into_the_training_one_is_refused(tmp_path, files):
    files.tree(tmp_path / "t" / "train", per_class=4)
    (tmp_path / "t" / "test").mkdir()
    for c in ("cat", "dog", "eel"):
        (tmp_path / "t" / "test" / c).symlink_to(tmp_path / "t" / "train" / c)
    with pytest.raises(UserError, match=r"test/cat' is the same folder as .*train/cat'"):
        imagefolder.scan(tmp_path / "t")


def test_a_link_to_a_folder_outside_the_tree_is_followed(tmp_path, files):
    files.tree(tmp_path / "tree", per_class=2)
    files.image(tmp_path / "elsewhere" / "far.png", (200, 30, 30))
    (tmp_path / "tree" / "cat" / "linked").symlink_to(tmp_path / "elsewhere")
    tree = imagefolder.scan(tmp_path / "tree")
    assert "cat/linked/far.png" in tree.files and len(tree.files) == 7
    assert tree.stats[tree.files.index("cat/linked/far.png")][0] == (tmp_path / "elsewhere" / "far.png").stat().st_size


def test_the_same_file_through_a_link_is_refused(tmp_path, files):
    files.tree(tmp_path / "tree", per_class=2)
    (tmp_path / "tree" / "dog" / "also.png").symlink_to(tmp_path / "tree" / "cat" / "00.png")
    with pytest.raises(UserError, match=r"dog/also\.png' is the same file as .*cat/00\.png'.*counted twice"):
        imagefolder.scan(tmp_path / "tree")


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda p: p.symlink_to(p.parent / "gone.jpg"), "is a dangling symbolic link"),
        (lambda p: os.mkfifo(p), r"is not a regular file \(a pipe, socket or device\)"),
        (lambda p: p.mkdir(), "is a directory, not a file"),
    ],
    ids=["dangling link", "fifo", "folder"],
)
def test_an_image_name_that_is_no_file_is_refused_before_opening(tmp_path, files, make, error):
    # A FIFO named like an image blocked the decoding thread forever; now nothing opens it.
    files.tree(tmp_path / "tree", per_class=2)
    bad = tmp_path / "tree" / "dog" / "x.jpg"
    make(bad)
    outcome = files.finishes(lambda: load(tmp_path / "tree"), fifo=bad)
    assert isinstance(outcome, UserError), outcome
    assert f"image file '{bad}' " in str(outcome) and re.search(error, str(outcome))


def test_an_unreadable_folder_is_refused_not_skipped(tmp_path, files):
    files.tree(tmp_path / "tree", per_class=2)
    files.image(tmp_path / "tree" / "cat" / "locked" / "a.png", (200, 30, 30))
    if os.geteuid() == 0:
        pytest.skip("root reads any folder")
    (tmp_path / "tree" / "cat" / "locked").chmod(0)
    try:
        with pytest.raises(UserError, match=r"cannot read the folder .*locked' \(Permission denied\)"):
            imagefolder.scan(tmp_path / "tree")
    finally:
        (tmp_path / "tree" / "cat" / "locked").chmod(0o755)


# ---------------------------------------------------------------- decompression bombs


def test_an_image_claiming_huge_dimensions_is_unreadable(tmp_path, files):
    files.tree(tmp_path / "tree", per_class=2)
    files.png_claiming(tmp_path / "tree" / "dog" / "bomb.png", 30000, 30000)
    with pytest.raises(UserError, match=r"1 unreadable image file\(s\).*dog/bomb\.png \(DecompressionBomb"):
        load(tmp_path / "tree")


def test_an_image_between_one_and_two_times_the_pixel_limit_is_unreadable(tmp_path, files, monkeypatch):
    # PIL only warns there, and would decode it: up to 2 x 89 M pixels in each decoding thread.
    files.tree(tmp_path / "tree", per_class=2)  # 20 x 12 = 240 px images
    monkeypatch.setattr(imagefolder.Image, "MAX_IMAGE_PIXELS", 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning escapes
        with pytest.raises(UserError, match=r"6 unreadable image file\(s\).*DecompressionBombWarning: Image size"):
            load(tmp_path / "tree")
    # The decoding's filter is gone again.
    assert not any(f[2] is imagefolder.Image.DecompressionBombWarning and f[0] == "error" for f in warnings.filters)


# ---------------------------------------------------------------- a tampered cache index


def _tamper_text(text):
    return lambda index, path: path.write_text(text)


def _tamper(**changes):
    def edit(index, path):
        index.update(changes)
        for key in [k for k, v in changes.items() if v is _DROP]:
            del index[key]
        path.write_text(json.dumps(index))

    return edit


_DROP = object()


TAMPERINGS = {
    "not JSON": _tamper_text("not json {"),
    "a list": _tamper_text("[1, 2, 3]"),
    "not UTF-8": _tamper_text("\xff\xfe"),
    "nested too deeply": _tamper_text("[" * 100_000 + "]" * 100_000),
    "no bad list": _tamper(bad=_DROP),
    "no files": _tamper(files=_DROP),
    "bad not a list": _tamper(bad=5),
    "bad index past the end": _tamper(bad=[[999, "x"]]),
    "bad index negative": _tamper(bad=[[-1, "x"]]),
    "bad index a string": _tamper(bad=[["0", "x"]]),
    "bad index a bool": _tamper(bad=[[True, "x"]]),
    "bad entry without reason": _tamper(bad=[[0]]),
    "other files": _tamper(files=["a.png"]),
    "other classes": _tamper(classes=["cat", "dog"]),
    "other version": _tamper(version="1"),
}


@pytest.mark.parametrize("tamper", list(TAMPERINGS.values()), ids=list(TAMPERINGS))
def test_a_tampered_cache_index_is_a_miss_and_rebuilt(tmp_path, files, tamper):
    files.tree(tmp_path / "tree")
    want = load(tmp_path / "tree")
    index_path = next(cache_of(tmp_path / "tree").glob("index-*.json"))
    tamper(json.loads(index_path.read_text()), index_path)
    got = load(tmp_path / "tree")
    assert torch.equal(got.train.x, want.train.x) and torch.equal(got.test.y, want.test.y)
    assert json.loads(index_path.read_text())["bad"] == []  # rewritten


@pytest.mark.parametrize(
    "array",
    [np.zeros((15, 3, 9, 9), np.uint8), np.zeros((15, 3, 8, 8), np.float32), np.zeros((8, 8, 3, 15), np.uint8).T],
    ids=["shape", "dtype", "fortran order"],
)
def test_a_cache_array_of_another_shape_is_a_miss(tmp_path, files, array):
    files.tree(tmp_path / "tree")
    want = load(tmp_path / "tree")
    np.save(next(cache_of(tmp_path / "tree").glob("images-*.npy")), array)
    assert torch.equal(load(tmp_path / "tree").train.x, want.train.x)


# ---------------------------------------------------------------- what a run says about its data


def test_a_run_says_where_it_cached_the_images_once_and_leaves_the_folder_alone(tmp_path, files):
    from typer.testing import CliRunner

    from softmaxlab.cli import app

    files.tree(tmp_path / "tree", per_class=10)
    before = files.listing(tmp_path / "tree")
    plain = ["data.image_size=16", "model.widths=[8,16]", "train.epochs=1", "train.batch_size=8", "train.device=cpu"]
    args = ["run", "--data", f"imagefolder:{tmp_path / 'tree'}", *(a for o in plain for a in ("--set", o))]
    runner = CliRunner()
    first = runner.invoke(app, [*args, "--set", "data.max_train_images=12", "--out", str(tmp_path / "r1")])
    assert first.exit_code == 0, first.output
    lines = [line for line in first.stderr.splitlines() if line.startswith("data: ")]
    assert lines == [
        "data: imagefolder, 12 train / 2 val / 6 test images",
        f"data: cached 30 decoded images of 16 px in {str(cache_of(tmp_path / 'tree'))!r} (23.0 kB)",
    ]
    assert first.stderr.splitlines()[0] == lines[0]  # the run's first line
    second = runner.invoke(app, [*args, "--out", str(tmp_path / "r2")])
    assert second.exit_code == 0, second.output
    assert [line for line in second.stderr.splitlines() if line.startswith("data: ")] == [
        "data: imagefolder, 22 train / 2 val / 6 test images"  # a cache hit: nothing to say about it
    ]
    assert files.listing(tmp_path / "tree") == before
