"""The run timeline in headless Chromium: it draws its plots, links each epoch's report, runs
nothing, fetches nothing, and a class name with HTML stays text."""
from __future__ import annotations

from pathlib import Path

import _records as records
import pytest

from debugatlas.artifacts.record import RunRecord
from debugatlas.report.timeline import epoch_entry, write_timeline

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing; install it with .ci/install-browser.sh (apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing; pip install playwright")


def _summary(epoch: int) -> RunRecord:
    confirmed = epoch >= 2
    rate = 0.3 * epoch if epoch else None
    rates = {"noise_flip_rate": 0.05, "natural_flip_rate": 0.1}
    patch = records.patch_row("p", rate, verdict="confirmed" if confirmed else "not_confirmed", **rates)
    b = '7<img src=x onerror="alert(1)">'
    pair = records.pair("4", b, 10 - 3 * epoch, [patch], [records.finding("p", rate, None, **rates)] if confirmed else [])
    return RunRecord.from_dict(records.run([pair], classes=("4", b), accuracy=0.5 + 0.1 * epoch))


def test_timeline_draws_links_and_stays_inert(tmp_path):
    run = tmp_path / "atlas"
    for epoch in range(4):
        (run / f"epoch_{epoch}").mkdir(parents=True)
        (run / f"epoch_{epoch}" / "index.html").write_text(f"<title>epoch {epoch}</title>")
    write_timeline(run, [epoch_entry(_summary(e), e, f"epoch_{e}/index.html") for e in range(4)], title="run")
    errors, requests, dialogs = [], [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto((run / "index.html").as_uri(), wait_until="load")
            boxes = page.eval_on_selector_all("svg", "els => els.map(e => e.getBoundingClientRect().width)")
            lines = page.eval_on_selector_all("polyline", "els => els.map(e => e.getTotalLength())")
            heading = page.inner_text("section.pair h2")
            assert page.eval_on_selector_all("img", "els => els.length") == 0
            page.click("text=epoch 3")
            page.wait_for_load_state()
            assert page.title() == "epoch 3"
        finally:
            browser.close()
    assert errors == [] and dialogs == []
    assert all(url.startswith("file://") for url in requests)
    assert len(boxes) == 2 and all(w > 200 for w in boxes)
    assert len(lines) == 3 and all(length > 50 for length in lines)  # confused, best patch, confirmed (2 points)
    assert heading == '4 → 7<img src=x onerror="alert(1)">'  # shown as text, not parsed as an element
