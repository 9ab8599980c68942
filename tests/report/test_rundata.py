import os

import yaml

from softmaxlab.report.rundata import find_run_dirs, group_variants, load_run

from .conftest import write_run


def test_runs_are_found_below_and_ordered_as_they_were_written(tmp_path):
    b = write_run(tmp_path / "b")
    a = write_run(tmp_path / "group" / "a", seed=1)
    os.utime(b / "config.yaml", (1, 1))  # b was written first
    assert find_run_dirs(tmp_path) == [b, a]
    assert find_run_dirs(a) == [a]  # a run directory is its own report


def test_seeds_group_into_variants_labelled_by_what_differs(tmp_path):
    runs = [
        load_run(write_run(tmp_path / "s0", seed=0)),
        load_run(write_run(tmp_path / "g0", "head.name=gumbel", "head.tau_schedule=exponential", seed=0)),
        load_run(write_run(tmp_path / "s1", seed=1)),
        load_run(write_run(tmp_path / "g1", "head.name=gumbel", "head.tau_schedule=exponential", seed=1)),
        load_run(write_run(tmp_path / "lr", "train.lr=0.2")),
    ]
    variants, keys = group_variants(runs, ["red", "blue"])
    assert keys == ["head.name", "head.tau_schedule", "train.lr"]
    # head.tau_schedule only changes with head.name, so the labels leave it out
    assert [v.label for v in variants] == ["head=softmax, lr=0.1", "head=gumbel, lr=0.1", "head=softmax, lr=0.2"]
    assert [len(v.runs) for v in variants] == [2, 2, 1] and [v.color for v in variants] == ["red", "blue", "red"]
    assert runs[2].variant == "head=softmax, lr=0.1"


def test_labels_leave_out_the_directory_the_paths_share(tmp_path):
    def labels(*roots: str) -> list[str]:
        runs = []
        for root in roots:
            run = write_run(tmp_path / str(len(list(tmp_path.iterdir()))))
            config = yaml.safe_load((run / "config.yaml").read_text())
            config["data"]["root"] = root  # as an npz or imagefolder run records it
            (run / "config.yaml").write_text(yaml.safe_dump(config))
            runs.append(load_run(run))
        return [v.label for v in group_variants(runs)[0]]

    assert labels("../data/cifar.npz", "../data/intel.npz") == ["root=cifar.npz", "root=intel.npz"]
    assert labels("a/x/set.npz", "a/y/set.npz") == ["root=x/set.npz", "root=y/set.npz"]
    # A path and a plain value that would read alike keep the paths whole.
    assert labels("d/set.npz", "set.npz") == ["root=d/set.npz", "root=set.npz"]


def test_a_diverged_run_is_read_as_diverged(tmp_path):
    run = load_run(write_run(tmp_path / "d", status="diverged"))
    assert run.status == "diverged" and run.test == {} and len(run.history) == 2
    assert run.command == f"softmaxlab run {(tmp_path / 'd').as_posix()}/config.yaml"
