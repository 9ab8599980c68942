"""report.html in a real browser: headless Chromium driven by selenium through chromedriver.

Where Chromium, chromedriver or selenium is missing the browser tests skip with that reason,
except under CI=true, where they fail: CI installs them (``.ci/run``).
"""

from __future__ import annotations

import io
import os
import shutil

import pytest
from PIL import Image

from softmaxlab.report.document import Cell, Code, Note, Report, Section, Table
from softmaxlab.report.document import Image as ImageBlock
from softmaxlab.report.html import render_html


def _chromium() -> tuple[str, str] | str:
    """(browser, driver) executables, or the reason they cannot be used."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        return "Chromium or chromedriver is not installed (apt-get install chromium chromium-driver)"
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    found = _chromium()
    if isinstance(found, str):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {found}")
        pytest.skip(found)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",  # a laptop's browser window: the report must fit it
    ):
        options.add_argument(arg)
    options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND")  # the report must not need a network
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    yield driver
    driver.quit()


def _column(driver, table: str, header: str) -> list[str | None]:
    """The data-sort values of a column, top to bottom, as the page shows them now."""
    return driver.execute_script(
        """
        const table = document.getElementById(arguments[0]);
        const col = Array.from(table.tHead.rows[0].cells).findIndex(th => th.textContent === arguments[1]);
        return Array.from(table.tBodies[0].rows).map(r => r.cells[col].getAttribute("data-sort"));
        """,
        table,
        header,
    )


def _click(driver, table: str, header: str) -> None:
    from selenium.webdriver.common.by import By

    for th in driver.find_elements(By.CSS_SELECTOR, f"#{table} thead th"):
        if th.get_attribute("textContent") == header:
            th.click()
            return
    raise AssertionError(f"no header {header!r} in {table}")


def test_report_opens_offline_with_every_image_and_sortable_tables(browser, study_report):
    browser.get((study_report / "report.html").as_uri())
    images = browser.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert len(images) == 11 and all(done and width > 0 for done, width in images)  # 8 figures, 3 feature maps
    requests = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(r.startswith("data:") for r in requests), requests
    # one row per run (and one per variant in the comparison)
    assert len(_column(browser, "table-runs", "run")) == 6
    assert len(_column(browser, "table-comparison", "variant")) == 3

    # clicking a header sorts by it, numbers numerically with missing values last; again reverses
    assert _column(browser, "table-runs", "accuracy (%)") == ["80.0", "70.0", "80.0", "70.0", "60.0", None]
    _click(browser, "table-runs", "accuracy (%)")
    assert _column(browser, "table-runs", "accuracy (%)") == ["60.0", "70.0", "70.0", "80.0", "80.0", None]
    _click(browser, "table-runs", "accuracy (%)")
    assert _column(browser, "table-runs", "accuracy (%)") == ["80.0", "80.0", "70.0", "70.0", "60.0", None]
    _click(browser, "table-runs", "run")
    names = _column(browser, "table-runs", "run")
    assert names == sorted(names) and names[0] == "gumbel-0"
    _click(browser, "table-comparison", "accuracy (%)")
    assert _column(browser, "table-comparison", "variant") == ["head=sparsemax", "head=gumbel", "head=softmax"]

    _assert_fits(browser)

    # what the reader sees is not blank: many colours, and a good share of non-white pixels
    with Image.open(io.BytesIO(browser.get_screenshot_as_png())) as shot:
        rgb = shot.convert("RGB")
        colours = rgb.getcolors(1 << 24)
        ink = sum(n for n, c in colours if c != (255, 255, 255)) / (rgb.width * rgb.height)
        assert len(colours) > 100 and ink > 0.05


def _assert_fits(driver) -> None:
    """No horizontal scrollbar on the page, nor on the comparison's tables (at the window's 1400 px)."""
    width, client = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert driver.execute_script("return window.innerWidth") == 1400
    assert width <= client, f"the page is {width} px wide in a {client} px window"
    for key in ("comparison", "comparison-more", "differences"):
        scroll, shown = driver.execute_script(
            "const div = document.getElementById(arguments[0]).parentElement;return [div.scrollWidth, div.clientWidth]",
            f"table-{key}",
        )
        assert scroll <= shown, f"table-{key} is {scroll} px wide in {shown} px"


@pytest.fixture(scope="module")
def wide_report(tmp_path_factory):
    """A sweep of 11 variants with labels like "head=temperature, temperature=0.5,
    learn_temperature=true", 2 seeds each, its report without figures (the tables are what
    can be too wide; figures are scaled to the page)."""
    from softmaxlab.report.build import write_report

    from .conftest import write_run

    root = tmp_path_factory.mktemp("wide")
    heads = [("head.name=softmax",), ("head.name=sparsemax",), ("head.name=gumbel", "head.tau_schedule=exponential")]
    heads += [
        ("head.name=temperature", f"head.learn_temperature={learn}", f"head.temperature={t}")
        for learn in ("true", "false")
        for t in (0.5, 1.0, 2.0, 4.0)
    ]
    for i, overrides in enumerate(heads):
        for seed in (0, 1):
            write_run(root / f"v{i}-{seed}", *overrides, seed=seed, accuracy=0.5 + 0.03 * i + 0.02 * seed)
    write_report(root, "html", figures=False)
    return root


def test_a_sweep_of_eleven_variants_fits_a_1400_px_window(browser, wide_report):
    browser.get((wide_report / "report.html").as_uri())
    assert len(_column(browser, "table-comparison", "variant")) == 11
    assert len(_column(browser, "table-differences", "variant")) == 10
    _assert_fits(browser)


def test_text_is_escaped_and_cells_carry_their_sort_values():
    report = Report(
        "<b>runs</b>",
        ["a & b"],
        [
            Section(
                "x",
                "X",
                [
                    Table("t", ["name"], [[Cell("<script>", "z"), Cell("1.5", 1.5, best=True, status="diverged")]]),
                    Table("u", ["d"], [[Cell("+1.2\np 0.01", 1.2, significant=True, wrap=True)]], title="Δ <x>"),
                    Note("p < q"),
                    Code("config", "a: <1>", collapsed=True),
                    ImageBlock("f", b"\x89PNG", 'alt "text"'),
                ],
            )
        ],
    )
    html = render_html(report)
    assert "<title>&lt;b&gt;runs&lt;/b&gt;</title>" in html and "<p>a &amp; b</p>" in html
    assert '<td data-sort="z">&lt;script&gt;</td>' in html and '<tr class="diverged">' in html
    assert '<td data-sort="1.5" class="num best" title="best in this column">1.5</td>' in html
    assert (
        '<td data-sort="1.2" class="num significant wrap" title="significant after correction">+1.2<br>p 0.01</td>'
        in html
    )
    assert "<caption>Δ &lt;x&gt;</caption>" in html
    assert "<details><summary>config</summary><pre><code>a: &lt;1&gt;</code></pre></details>" in html
    assert 'src="data:image/png;base64,iVBORw==" alt="alt &quot;text&quot;"' in html
