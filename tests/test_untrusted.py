import os

import pytest

from softmaxlab import untrusted
from softmaxlab.errors import UserError
from softmaxlab.untrusted import YamlError, load_yaml

#: Nine levels of nine aliases each: 9**9 = 387 million values from 700 bytes.
BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)
)


def test_an_alias_bomb_is_refused_without_expanding_it():
    assert len(BOMB) < 1000
    with pytest.raises(YamlError, match="more than 100,000 values through its YAML aliases"):
        load_yaml(BOMB, "bomb.yaml")


def test_aliases_that_stay_small_and_merge_keys_still_work():
    text = "base: &b {lr: 0.1, epochs: 2}\nrun:\n  <<: *b\n  lr: 0.3\nagain: *b\n"
    assert load_yaml(text, "t") == {
        "base": {"lr": 0.1, "epochs": 2},
        "run": {"lr": 0.3, "epochs": 2},  # a merged key may be overridden
        "again": {"lr": 0.1, "epochs": 2},
    }


@pytest.mark.parametrize(
    ("text", "lines"),
    [("train:\n  lr: 0.1\n  lr: 0.3\n", "lines 2 and 3"), ("a: {x: 1, x: 2}\n", "lines 1 and 1")],
)
def test_a_key_written_twice_is_refused(text, lines):
    with pytest.raises(YamlError, match=f"sets '[a-z]+' twice in one mapping \\({lines}\\)"):
        load_yaml(text, "t")


@pytest.mark.parametrize("text", ["&a [*a]", "!!python/object/apply:os.system [ls]", "a: [1\n"])
def test_recursive_aliases_python_tags_and_bad_syntax_are_one_line_errors(text):
    with pytest.raises(YamlError) as info:
        load_yaml(text, "t")
    assert "\n" not in str(info.value)


def test_only_regular_files_are_read(tmp_path):
    os.mkfifo(tmp_path / "fifo.yaml")  # opening it would wait for a writer forever
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "dangling.yaml").symlink_to(tmp_path / "gone")
    (tmp_path / "big.yaml").write_bytes(b"x" * 2048)
    expected = {
        "fifo.yaml": "not a regular file",
        "dir.yaml": "is a directory",
        "dangling.yaml": "dangling symbolic link",
        "none.yaml": "does not exist",
    }
    for name, problem in expected.items():
        with pytest.raises(UserError, match=problem):
            untrusted.read_text(tmp_path / name, "config file", "pass a YAML file")
    with pytest.raises(UserError, match="is 2,048 bytes, more than the 1,024 allowed"):
        untrusted.read_text(tmp_path / "big.yaml", "config file", "pass a YAML file", limit=1024)
