from softmaxlab.report import format_mean_std, markdown_table


def test_table_shape():
    t = markdown_table(["a", "b", "c"], [[1, 2, 3], ["x", "y", "z"]])
    lines = t.splitlines()
    assert len(lines) == 4 and all(line.count("|") == 4 for line in lines)


def test_format_nan():
    assert format_mean_std(float("nan"), 0.0) == "n/a"


def test_render_markdown_tables_figures_and_code():
    from softmaxlab.report.document import Cell, Code, Image, Note, Report, Section, Table
    from softmaxlab.report.markdown import render_markdown

    table = Table("t", ["run", "acc"], [[Cell("a|b"), Cell("0.9", 0.9, best=True)]])
    blocks = [table, Image("curves", b"", "curves", "a caption"), Note("a note"), Code("config", "x: 1", "yaml", True)]
    md = render_markdown(Report("title", ["intro"], [Section("s", "Section", blocks)]), {"curves": "figures/c.png"})
    assert md.startswith("# title\n\nintro  \n\n## Section\n")
    assert "| a\\|b | **0.9** |" in md and "![curves](figures/c.png)\n\n*a caption*" in md
    assert "<details><summary>config</summary>\n\n```yaml\nx: 1\n```\n\n</details>" in md


def test_markup_in_run_names_is_shown_literally():
    """A run named like HTML or a link must not become one in report.md (report.html escapes it)."""
    from softmaxlab.report.document import Cell, Code, Note, Report, Section, Table
    from softmaxlab.report.markdown import render_markdown

    name = "<img src=x onerror=alert(1)> [click](javascript:x) **b**"
    table = Table("t", ["run"], [[Cell(name)]])
    code = Code(f"run {name}", "x: 1\n```\nnot closed", "yaml", False)
    md = render_markdown(Report(name, [name], [Section("s", name, [table, Note(name), code])]), {})
    assert "<img" not in md and "[click]" not in md and "**b**" not in md
    assert md.count("&lt;img src=x onerror=alert(1)&gt;") == 6
    assert "````yaml\nx: 1\n```\nnot closed\n````" in md  # the code's own fence cannot end the block
