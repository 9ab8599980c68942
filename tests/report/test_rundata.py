import yaml

from softmaxlab.report.rundata import group_variants
from softmaxlab.runs import read_run

from .conftest import write_run


def test_seeds_group_into_variants_labelled_by_what_differs(tmp_path):
    runs = [
        read_run(write_run(tmp_path / "s0", seed=0)),
        read_run(write_run(tmp_path / "g0", "head.name=gumbel", "head.tau_schedule=exponential", seed=0)),
        read_run(write_run(tmp_path / "s1", seed=1)),
        read_run(write_run(tmp_path / "g1", "head.name=gumbel", "head.tau_schedule=exponential", seed=1)),
        read_run(write_run(tmp_path / "lr", "train.lr=0.2")),
    ]
    variants, keys = group_variants(runs, ["red", "blue"])
    # head.tau_schedule is an option of gumbel alone, which both gumbel variants set alike: it
    # differs only with head.name, so neither the varying keys nor the labels show it
    assert keys == ["head.name", "train.lr"]
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
            runs.append(read_run(run))
        return [v.label for v in group_variants(runs)[0]]

    assert labels("../data/cifar.npz", "../data/intel.npz") == ["root=cifar.npz", "root=intel.npz"]
    assert labels("a/x/set.npz", "a/y/set.npz") == ["root=x/set.npz", "root=y/set.npz"]
    # A path and a plain value that would read alike keep the paths whole.
    assert labels("d/set.npz", "set.npz") == ["root=d/set.npz", "root=set.npz"]


def test_a_diverged_run_is_read_as_diverged(tmp_path):
    run = read_run(write_run(tmp_path / "d", status="diverged"))
    assert run.status == "diverged" and run.test == {} and len(run.history) == 2
    assert run.command == f"softmaxlab run {(tmp_path / 'd').as_posix()}/config.yaml"
