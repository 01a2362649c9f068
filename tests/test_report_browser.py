"""The report in a real browser: headless Debian Chromium driven by Playwright, offline.

The page is opened from disk (a file:// URL). The `report_dir` fixture builds a report from a
fixture summary with real PNG files and hostile class names; point it at another report by
setting DEBUGATLAS_REPORT_DIR (a folder holding index.html, and summary.json if available) or
by overriding the fixture.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing; install it with .ci/install-browser.sh (apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is missing; install it with `pip install playwright`")

SECTION_HEADINGS = ("Findings", "Run", "Confusion matrix", "Studied pairs in detail", "Patch suite and CI check",
                    "Activation atlas")
PAIR_HEADINGS = ("Class-filtered atlases", "Comparison atlas", "Confusing features, ranked",
                 "Patch tests")


def _fixture_module():
    path = Path(__file__).with_name("test_report.py")
    spec = importlib.util.spec_from_file_location("_report_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    """The folder of the report under test (replaceable: see the module docstring)."""
    given = os.environ.get("DEBUGATLAS_REPORT_DIR")
    if given:
        return Path(given)
    from debugatlas.report import write_report

    out = tmp_path_factory.mktemp("browser_report")
    summary, report_data = _fixture_module().make_report_inputs(out)
    write_report(out, summary, report_data)
    return out


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Visit:
    """A page opened on the report, with everything it logged, requested or tried to pop up."""

    def __init__(self, browser, report_dir: Path) -> None:
        self.console_errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("pageerror", lambda e: self.console_errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", self._dialog)
        self.page.goto((report_dir / "index.html").resolve().as_uri(), wait_until="load")
        self.page.wait_for_function(
            "() => Array.from(document.images).every(i => !i.getAttribute('src') || i.complete)")

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


@pytest.fixture()
def visit(browser, report_dir):
    v = Visit(browser, report_dir)
    yield v
    v.page.close()


def _keep(shot: Path) -> None:
    """Copy a screenshot to $DEBUGATLAS_SCREENSHOT_DIR when that is set (to look at it)."""
    folder = os.environ.get("DEBUGATLAS_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(folder) / shot.name)


def _summary(report_dir: Path) -> dict:
    path = report_dir / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


@pytest.mark.slow
def test_report_renders_offline_and_safely(visit, report_dir, tmp_path):
    page = visit.page
    headings = page.eval_on_selector_all("h2, h3", "els => els.map(e => e.textContent.trim())")
    for heading in SECTION_HEADINGS:
        assert heading in headings, heading
    summary = _summary(report_dir)
    if summary.get("pairs"):
        for heading in PAIR_HEADINGS:
            assert heading in headings, heading

    images = page.evaluate("""() => Array.from(document.images).filter(i => i.getAttribute('src'))
        .map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])""")
    assert images, "the report shows no images"
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert not broken, f"images that did not load: {broken[:5]}"

    text = page.inner_text("body")
    for name in summary.get("classes", []) + [summary.get("layer", "")]:
        if "<" in name:
            assert name in text, f"{name!r} is not shown as text"
    assert page.evaluate("() => window.__pwned === undefined")
    assert page.evaluate("() => document.querySelectorAll('script').length") == 2
    assert not visit.dialogs, f"a script from the data ran: {visit.dialogs}"
    assert not visit.console_errors, visit.console_errors
    off_disk = [u for u in visit.requests if not u.startswith("file:")]
    assert not off_disk, f"network requests: {off_disk}"

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    _keep(shot)

    violated = page.evaluate("""() => new Promise(resolve => {
        document.addEventListener('securitypolicyviolation', e => resolve(e.effectiveDirective), {once: true});
        const probe = new Image();
        probe.src = 'http://127.0.0.1:9/probe.png';
        document.body.appendChild(probe);
        setTimeout(() => resolve(null), 3000);
    })""")
    assert violated == "img-src", "the page's Content-Security-Policy let a network image load"


def _non_empty_cell_centre(page) -> tuple[float, float, int] | None:
    """Viewport coordinates of the centre of a non-empty cell in the shown grid, and the grid size."""
    return page.evaluate("""() => {
        const data = JSON.parse(document.getElementById('atlas-data').textContent);
        const pressed = document.querySelector('#atlas-controls button[data-grid][aria-pressed="true"]');
        const grid = data.grids[Number(pressed.getAttribute('data-grid'))];
        if (!grid.cells.length) { return null; }
        const cell = grid.cells[Math.floor(grid.cells.length / 2)];
        const r = document.getElementById('atlas-canvas').getBoundingClientRect();
        const s = r.width / grid.grid_size;
        return [r.left + (cell[0] + 0.5) * s, r.top + (cell[1] + 0.5) * s, grid.grid_size];
    }""")


def test_atlas_tooltip_exemplars_and_grid_sizes(visit, tmp_path):
    page = visit.page
    if page.locator("#atlas-canvas").count() == 0:
        pytest.skip("this report has no atlas")
    page.locator("#atlas-canvas").scroll_into_view_if_needed()
    assert page.evaluate("() => document.querySelectorAll('#atlas-stage *').length") < 10
    buttons = page.locator("#atlas-controls button[data-grid]")
    sizes = []
    for index in range(buttons.count()):
        buttons.nth(index).click()
        found = _non_empty_cell_centre(page)
        if found is None:
            continue
        x, y, size = found
        sizes.append(size)
        page.mouse.move(x, y)
        tooltip = page.locator("#atlas-tooltip")
        tooltip.wait_for(state="visible", timeout=3000)
        assert "sample" in tooltip.inner_text()
        page.mouse.click(x, y)
        panel = page.locator("#atlas-panel")
        assert "sample" in panel.inner_text()
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('#atlas-panel img')).every(i => i.complete)")
        widths = page.eval_on_selector_all("#atlas-panel img", "els => els.map(i => i.naturalWidth)")
        assert all(w > 0 for w in widths)
        page.mouse.move(5, 5)
        tooltip.wait_for(state="hidden", timeout=3000)
    assert sizes and sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    for mode in ("class", "density", "image"):
        button = page.locator(f'#atlas-controls button[data-mode="{mode}"]')
        if button.is_enabled():
            button.click()
            assert button.get_attribute("aria-pressed") == "true"
    page.locator("#atlas-canvas").focus()
    page.keyboard.press("ArrowRight")
    assert "Cell (" in page.inner_text("#atlas-panel")

    buttons.nth(min(1, buttons.count() - 1)).click()
    x, y, _ = _non_empty_cell_centre(page) or (5, 5, 0)
    page.mouse.click(x, y)
    page.mouse.move(x + 1, y)
    page.locator("#atlas-tooltip").wait_for(state="visible", timeout=3000)
    shot = tmp_path / "atlas.png"
    page.locator("#atlas").screenshot(path=str(shot))
    _keep(shot)
    assert not visit.console_errors, visit.console_errors
    assert not visit.dialogs and page.evaluate("() => window.__pwned === undefined")
    assert all(u.startswith("file:") for u in visit.requests)


@pytest.mark.slow
def test_findings_open_the_page_and_the_icons_view_shows_icons(visit):
    page = visit.page
    top = page.evaluate("() => document.getElementById('findings').getBoundingClientRect().top")
    assert 0 <= top < 200, "the Findings section is not the first thing on the page"
    if page.locator("#atlas-canvas").count() == 0:
        pytest.skip("this report has no atlas")
    data = page.evaluate("() => JSON.parse(document.getElementById('atlas-data').textContent)")
    buttons = page.locator("#atlas-controls button[data-grid]")
    icons = page.locator('#atlas-controls button[data-mode="image"]')
    for index, grid in enumerate(data["grids"]):
        buttons.nth(index).click()
        if grid["icon_image"]:
            icons.click()
            assert icons.get_attribute("aria-pressed") == "true"
            assert page.get_attribute("#atlas-bg", "src") == grid["icon_image"]
            assert page.is_visible("#atlas-bg") and not page.is_visible("#atlas-note")
        else:
            assert icons.is_disabled() and not page.is_visible("#atlas-bg")
            assert "No feature icons for this grid" in page.inner_text("#atlas-note")
    assert not visit.console_errors, visit.console_errors


@pytest.mark.slow
def test_finding_cells_are_outlined_and_named_on_the_atlas(visit):
    page = visit.page
    if page.locator("#atlas-canvas").count() == 0:
        pytest.skip("this report has no atlas")
    data = page.evaluate("() => JSON.parse(document.getElementById('atlas-data').textContent)")
    marked = [(k, g) for k, g in enumerate(data["grids"]) if g["marks"]]
    if not marked:
        pytest.skip("no confirmed finding is marked on this report's atlas")
    index, grid = marked[0]
    i, j, label = grid["marks"][0]
    page.locator("#atlas-controls button[data-grid]").nth(index).click()
    page.locator("#atlas-canvas").scroll_into_view_if_needed()
    box = page.locator("#atlas-canvas").bounding_box()
    size = box["width"] / grid["grid_size"]
    x, y = box["x"] + (i + 0.5) * size, box["y"] + (j + 0.5) * size
    # Before any hover or click, only the outlines of marked cells are drawn over the icon atlas.
    alpha = page.evaluate("""([i, j, n]) => {
        const c = document.getElementById('atlas-canvas'), s = c.width / n, g = c.getContext('2d');
        const at = (x, y) => g.getImageData(Math.floor(x * s), Math.floor(y * s), 1, 1).data[3];
        return [at(i + 0.02, j + 0.5), at(i + 0.5, j + 0.5)];
    }""", [i, j, grid["grid_size"]])
    if page.locator('#atlas-controls button[data-mode="image"][aria-pressed="true"]').count():
        assert alpha[0] > 0 and alpha[1] == 0, alpha
    page.mouse.move(x, y)
    page.locator("#atlas-tooltip").wait_for(state="visible", timeout=3000)
    assert f"confirmed finding: {label}" in page.inner_text("#atlas-tooltip")
    page.mouse.click(x, y)
    assert f"confirmed finding: {label}" in page.inner_text("#atlas-panel")
    assert not visit.console_errors, visit.console_errors
