from softmaxlab.report import format_mean_std, markdown_table


def test_table_shape():
    t = markdown_table(["a", "b", "c"], [[1, 2, 3], ["x", "y", "z"]])
    lines = t.splitlines()
    assert len(lines) == 4 and all(line.count("|") == 4 for line in lines)


def test_format_nan():
    assert format_mean_std(float("nan"), 0.0) == "n/a"
