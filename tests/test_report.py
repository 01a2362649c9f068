"""The HTML report: escaping, the JSON blob, absent sections, atomic writes, no network URLs.

`make_report_inputs` builds a full summary + report_data (and, given a folder, real PNG files
beside it); the browser test reuses it.
"""
from __future__ import annotations

import hashlib
import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from _records import complete

from debugatlas.artifacts.record import RunRecord, sentence
from PIL import Image

from debugatlas.core import DebugAtlasError
from debugatlas.report import render_report, script_json, write_report
from debugatlas.report import writer as report_writer

HOSTILE_CLASS = "<script>alert(1)</script>"
HOSTILE_LAYER = '<img src=x onerror="window.__pwned=1">'
HOSTILE_TEXT = "</script><script>window.__pwned=1</script><!--"
CLASSES = [str(d) for d in range(9)] + [HOSTILE_CLASS]
VERDICTS = ("confirmed", "natural", "not_confirmed")
FINDING_STATEMENT = ("Pasting this feature on 3s makes the model say 8 in 65 % of them [55–74 %], "
                     "against 5 % for noise and 10 % for a crop of a real 8.")


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array * 255, 0, 255).astype(np.uint8)).save(path)


def _blob(rng: np.random.Generator, size: int, channels: int = 3) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    cx, cy, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.15, 0.3)]
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (rng.uniform(2, 5) * x + rng.uniform(0, 3) * y))
    colour = rng.uniform(0.2, 1.0, channels)
    image = (blob * (0.6 + 0.4 * stripes))[..., None] * colour
    return image[..., 0] if channels == 1 else image


def _atlas_png(rng: np.random.Generator, grid: int, occupied: np.ndarray, px: int = 640) -> np.ndarray:
    cell = px // grid
    image = np.full((grid * cell, grid * cell, 3), 0.08)
    tile = _blob(rng, cell)
    for i, j in zip(*np.nonzero(occupied)):
        hue = np.array([0.4 + 0.6 * i / grid, 0.5 + 0.5 * j / grid, 1.0 - 0.5 * i / grid])
        image[j * cell:(j + 1) * cell, i * cell:(i + 1) * cell] = tile * hue
    return image


def make_report_inputs(out_dir: Path | None = None, grid_sizes=(10, 20, 80), seed: int = 0):
    """A summary.json dict and a report_data dict for a 10-class run with two analysed pairs.

    With `out_dir`, every image named in report_data is written there as a real PNG.
    """
    rng = np.random.default_rng(seed)
    files: dict[str, np.ndarray] = {}
    k = len(CLASSES)
    cm = rng.integers(0, 4, size=(k, k))
    np.fill_diagonal(cm, rng.integers(40, 60, size=k))
    cm[3, 8], cm[9, 4] = 17, 11
    exemplars = [f"exemplars/crop {n}#.png" for n in range(12)]
    for path in exemplars:
        files[path] = _blob(rng, 24, 1)
    icons = [f"icons/icon_{n}.png" for n in range(6)]
    for path in icons:
        files[path] = _blob(rng, 32)

    atlases = []
    for grid in grid_sizes:
        occupied = rng.random((grid, grid)) < 0.7
        occupied[grid // 2, grid // 2] = occupied[0, 3] = occupied[1, 3] = True  # findings' cells
        image = f"atlas_{grid}.png"
        files[image] = _atlas_png(rng, grid, occupied)
        cells = []
        for i, j in zip(*np.nonzero(occupied)):
            mix = rng.choice(k, size=rng.integers(1, 4), replace=False)
            cells.append({
                "cell": [int(i), int(j)], "count": int(rng.integers(1, 200)),
                "classes": {CLASSES[c]: int(rng.integers(1, 50)) for c in mix},
                "attribution": {name: float(rng.normal()) for name in CLASSES},
                "exemplars": [exemplars[(i + j + n) % 12] for n in range(4)],
                "icon": icons[(i * 7 + j) % 6] if grid <= 20 else None,
            })
        entry = {"grid_size": grid, "cells": cells}
        if grid <= 10:
            entry.update(icon_image=image, image=image)
        elif grid <= 20:
            entry.update(icon_image=image)
        else:
            entry.update(image=image)
        atlases.append(entry)

    def pair(a: str, b: str, n: int, confirmed: bool) -> tuple[dict, dict]:
        stem = f"pair{n}"
        for name in ("filtered_a", "filtered_b", "comparison"):
            files[f"{stem}_{name}.png"] = _atlas_png(rng, 10, rng.random((10, 10)) < 0.6, px=320)
        cells = [{"cell": [int(c), 3], "score": float(3 - 0.4 * c), "count": int(40 - 3 * c),
                  "attribution_a": float(0.5 - 0.1 * c), "attribution_b": float(0.9 - 0.2 * c),
                  "icon": icons[c % 6], "exemplars": exemplars[c:c + 6]} for c in range(5)]
        cells.append({"cell": [7, 7], "score": -0.25, "count": 9, "attribution_a": 0.3,
                      "attribution_b": 0.1, "icon": icons[0], "exemplars": exemplars[:2]})
        misclassified = []
        for m in range(6):
            image, heat = f"examples/{stem}_{m}.png", f"examples/{stem}_{m}_heat.png"
            files[image] = _blob(rng, 24, 1)
            heatmap = np.zeros((24, 24, 4))
            heatmap[..., 0], heatmap[..., 3] = 1.0, _blob(rng, 24, 1)
            files[heat] = heatmap
            misclassified.append({"id": 100 + m, "image": image, "heatmap": heat, "p_b": 0.5 + m / 15})
        patches = []
        for c in range(3):
            file = f"patches/{stem}_cell{c}.png"
            files[file] = _blob(rng, 16)
            for placement, boost in (("static", 0.0), ("dynamic", 0.2), ("random", -0.1)):
                flip = max(0.0, 0.45 - 0.15 * c + boost)
                if placement != "random":
                    verdict = VERDICTS[c] if confirmed else "not_confirmed"
                    patches.append({"id": f"{stem}-{c}-{placement}", "cell": [c, 3], "file": file,
                                    "target": b, "size_frac": 0.2, "placement": placement,
                                    "n_images": 80, "flip_rate": flip, "noise_flip_rate": 0.05,
                                    "natural_flip_rate": 0.1, "verdict": verdict,
                                    "flip_rate_ci": [max(0.0, flip - 0.1), min(1.0, flip + 0.1)],
                                    "p_value": 0.0004 if verdict == "confirmed" else 0.4})
        findings, rd_findings = [], []
        if confirmed:
            crops = [f"exemplars/{stem}_finding_{m}.png" for m in range(3)]
            for path in crops:
                files[path] = _blob(rng, 24, 1)
            findings = [
                {"cell": [0, 3], "statement": FINDING_STATEMENT, "patch": f"{stem}-0-dynamic", "placement": "dynamic",
                 "patch_file": f"patches/{stem}_cell0.png",
                 "flip_rate": 0.65, "flip_rate_ci": [0.55, 0.74], "noise_flip_rate": 0.05,
                 "natural_flip_rate": 0.1, "exemplar_ids": [11, 12], "icon": icons[0],
                 "suspected_shortcut": False, "synthesized_only": True, "real_crops_tested": 2},
                {"cell": [1, 3], "statement": sentence(a, b, 0.3, [0.21, 0.41], 0.02, 0.04),
                 "patch": f"{stem}-1-static", "patch_file": f"patches/{stem}_cell1.png", "flip_rate": 0.3,
                 "synthesized_only": None, "real_crops_tested": None,
                 "flip_rate_ci": [0.21, 0.41], "noise_flip_rate": 0.02, "natural_flip_rate": 0.04,
                 "exemplar_ids": [21, 22, 23], "icon": icons[1], "suspected_shortcut": True,
                 "shortcut_evidence": {
                     "cells": [[1, 3]], "b": CLASSES.index(b), "exemplar_b_share": 0.8, "real_beats_noise": 3, "real_confirmed": 2,
                     "real_tested": 3, "images_b": 40, "n_images_b": 50, "other_class": CLASSES.index(a),
                     "other_images": 1, "n_images_other": 52, "enrichment": 26.4, "purity": 0.9, "suspected": True,
                     "real_crop": {"patch": f"{stem}-1-ex0", "cell": [1, 3], "placement": "random", "n_images": 30,
                                   "flip_rate": 0.5, "flip_rate_ci": [0.33, 0.67], "noise_flip_rate": 0.02,
                                   "natural_flip_rate": 0.04, "verdict": "confirmed"},
                     "positions": [[0, 0, 0], [0, 5, 1], [0, 0, 0]], "spot": 0.83}},
            ]
            rd_findings = [{"cell": [0, 3], "exemplars": crops, "patch_image": f"patches/{stem}_cell0.png"}]
        rd = {"a": a, "b": b, "confused": int(cm[CLASSES.index(a), CLASSES.index(b)]),
              "notes": [f"only {n + 5} misclassified images of {a}"],
              "filtered_a": f"{stem}_filtered_a.png", "filtered_b": f"{stem}_filtered_b.png",
              "comparison": f"{stem}_comparison.png", "cells": cells,
              "misclassified": misclassified, "findings": rd_findings}
        sm = {"a": a, "b": b, "kind": "confused" if confirmed else "near_miss", "patches": patches,
              "findings": findings, "confusing_cells": [
            {"cell": c["cell"], "score": c["score"], "count": c["count"],
             "attribution_a": c["attribution_a"], "attribution_b": c["attribution_b"],
             "exemplar_ids": [1, 2, 3], "icon": c["icon"]} for c in cells]}
        return rd, sm

    rd1, sm1 = pair("3", "8", 1, confirmed=True)
    cm[9, 4] = 0
    rd2, sm2 = pair(HOSTILE_CLASS, "4", 2, confirmed=False)
    summary = {
        "schema_version": 1, "layer": HOSTILE_LAYER, "num_samples": 4321, "accuracy": 0.9123,
        "classes": CLASSES, "confusion_matrix": cm.tolist(), "pairs": [sm1, sm2],
        "timings_s": {"capture": 1.2, "attribution": 3.4, "layout": 8.9, "render": 20.5,
                      "patches": 6.1, "total": 40.1},
        "config": {"grid_sizes": list(grid_sizes), "grid_size": 20, "note": HOSTILE_TEXT,
                   "split": {"seed": 0, "selection": 0.5, "confirmation": 0.5}},
        "versions": {"debugatlas": "0.1.0", "torch": "2.x", "python": "3.11"},
    }
    report_data = {
        "title": "Digits: why 3 becomes 8", "model": "SmallCNN(width=8) " + HOSTILE_TEXT,
        "data": "sklearn digits, 24×24 & friends", "seed": 0,
        "score_description": "count_a × relu(attribution to B − attribution to A) " + HOSTILE_TEXT,
        "atlases": atlases, "pairs": [rd1, rd2],
        "suite": {"dir": "suite/", "check_command": "debugatlas check --suite suite/ --model m:f --data d/"},
    }
    summary = complete(summary)
    if out_dir is not None:
        for path, array in files.items():
            _png(Path(out_dir) / path, array)
        (Path(out_dir) / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return summary, report_data


def _json_blob(html: str) -> dict:
    start = html.index('<script type="application/json" id="atlas-data">') + len(
        '<script type="application/json" id="atlas-data">')
    return json.loads(html[start:html.index("</script>", start)])


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    summary, report_data = make_report_inputs(out, grid_sizes=(10, 20))
    html = write_report(out, summary, report_data).read_text(encoding="utf-8")
    return out, summary, report_data, html


def test_hostile_names_are_escaped_everywhere(full):
    _, _, _, html = full
    for raw in (HOSTILE_CLASS, HOSTILE_LAYER, HOSTILE_TEXT, "window.__pwned=1\">"):
        assert raw not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&#34;window.__pwned=1&#34;&gt;" in html
    assert html.count("<script") == 2 and html.count("</script>") == 2


def test_json_blob_cannot_end_its_script_element(full):
    text = str(script_json({"name": HOSTILE_TEXT, "amp": "a & b", "line": "\u2028"}))
    assert not set("<>&") & set(text)
    assert "\u2028" not in text
    assert json.loads(text) == {"name": HOSTILE_TEXT, "amp": "a & b", "line": "\u2028"}
    blob = _json_blob(full[3])
    assert blob["classes"][: len(CLASSES)] == CLASSES
    assert [g["grid_size"] for g in blob["grids"]] == [10, 20]


def test_atlas_blob_is_compact_and_indexed(full):
    blob = _json_blob(full[3])
    grid = blob["grids"][1]
    first = next(c for c in full[2]["atlases"][1]["cells"])
    i, j, count, mix, attr, exemplars, icon = grid["cells"][0]
    assert [i, j, count] == first["cell"] + [first["count"]]
    assert {blob["classes"][k]: n for k, n in mix} == first["classes"]
    assert [v for _, v in attr] == sorted((v for _, v in attr), reverse=True)
    assert exemplars[0].startswith("exemplars/crop%20") and "%23" in exemplars[0]
    assert blob["initial"] == 1
    assert [g["icon_image"] for g in blob["grids"]] == ["atlas_10.png", "atlas_20.png"]


def test_no_network_urls_and_a_strict_policy(full):
    _, _, _, html = full
    assert not re.search(r"(?i)https?:|//[a-z0-9]|@import|url\(", html)
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'none'" in policy and "connect-src" not in policy
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy


def test_every_section_is_rendered(full):
    _, _, _, html = full
    for heading in ("Findings", "Run", "Confusion matrix", "Most confused pairs", "Studied pairs in detail",
                    "Class-filtered atlases", "Comparison atlas", "Confusing features, ranked", "Patch tests",
                    "Patch suite and CI check", "Activation atlas"):
        assert f">{heading}</h" in html, heading
    assert "Not in this report" not in html
    assert "debugatlas check --suite suite/ --model m:f --data d/" in html
    assert html.count('<table class="data patches">') == 2
    assert "image missing" not in html and "file not found" not in html


def test_missing_sections_are_named_not_broken(tmp_path):
    html = write_report(tmp_path, complete({"confusion_matrix": []}), {}).read_text(encoding="utf-8")
    for text in ("Not in this report", "No pair of classes was analysed",
                 "No activation atlas was rendered", "No patch suite was saved",
                 "no usable confusion matrix"):
        assert text in html, text
    rd = {"atlases": [{"grid_size": 0}, {"grid_size": 4, "cells": [{"cell": [9, 9]}, {"cell": "x"}]}],
          "pairs": [{"a": "cat", "b": "dog", "cells": [{}], "misclassified": [{}]}],
          "suite": {"dir": None}}
    summary = complete({"classes": ["cat", "dog"], "confusion_matrix": [[5, 2], [1, 6]],
                        "pairs": [{"a": "cat", "b": "dog", "confusing_cells": [{"cell": [1, 2], "score": 2.0}],
                                   "patches": [{"id": "p1", "placement": "static", "flip_rate": 0.5}]}]})
    html = write_report(tmp_path, summary, rd).read_text(encoding="utf-8")
    assert "cat" in html and "No activation atlas" not in html
    assert "No patch suite was saved" in html
    html = write_report(tmp_path, summary).read_text(encoding="utf-8")
    assert "(1, 2)" in html and "50.0 %" in html and "No misclassified examples" in html
    assert "Exemplar crops were not saved" in html


@pytest.mark.parametrize("break_it, field", [
    (lambda s: s.pop("accuracy"), "`accuracy` is missing"),
    (lambda s: s.update(schema_version=2), "schema_version 2"),
    (lambda s: s["pairs"][0]["patches"][0].update(flip_rate="high"), "`pairs[0].patches[0].flip_rate` is 'high'"),
    (lambda s: s["pairs"][0].pop("confused"), "`pairs[0].confused` is missing"),
    (lambda s: s.update(pairs="x"), "`pairs` is str"),
])
def test_a_summary_with_a_missing_or_malformed_field_is_an_error_that_names_it(tmp_path, break_it, field):
    summary = complete({"pairs": [{"a": "cat", "b": "dog", "patches": [{"id": "p1", "flip_rate": 0.5}]}]})
    break_it(summary)
    with pytest.raises(DebugAtlasError, match=re.escape(field)):
        write_report(tmp_path, summary, {})
    assert not (tmp_path / "index.html").exists()


def test_feature_icons_view_shows_the_icon_atlas_not_the_class_colours(tmp_path):
    # As a run directory writes it: a class-colour grid picture for every grid, icons for the main one.
    for name in ("icon_atlas.png", "atlas_10_grid.png", "atlas_20_grid.png"):
        _png(tmp_path / name, np.ones((40, 40, 3)))
    rd = {"icon_atlas": "icon_atlas.png",
          "atlases": [{"grid_size": g, "image": None, "grid_image": f"atlas_{g}_grid.png",
                       "cells": [{"cell": [1, 1], "count": 3}]} for g in (10, 20)]}
    html = render_report(complete({"config": {"grid_size": 20}}), rd, tmp_path)
    blob = _json_blob(html)
    assert [g["icon_image"] for g in blob["grids"]] == [None, "icon_atlas.png"]
    assert "20×20 grid only" in blob["grids"][0]["icon_image_problem"]
    assert "atlas_10_grid.png" not in json.dumps(blob) and "atlas_20_grid.png" not in json.dumps(blob)
    assert 'src="atlas_10_grid.png"' in html  # still shown in the gallery of grid sizes
    assert blob["initial"] == 1 and blob["grids"][1]["cells"] == [[1, 1, 3, [], [], [], None]]


def test_image_paths_outside_the_folder_are_not_linked(tmp_path):
    rd = {"pairs": [{"a": "a", "b": "b", "filtered_a": "/etc/passwd", "filtered_b": "../x.png",
                     "comparison": "javascript:alert(1)",
                     "misclassified": [{"id": 1, "image": "examples/missing.png"}]}]}
    html = render_report(complete({"pairs": [{"a": "a", "b": "b"}]}), rd, tmp_path)
    assert "/etc/passwd" in html and 'src="/etc' not in html and 'src="..' not in html
    assert 'src="javascript' not in html and "file not found" in html


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(DebugAtlasError, match="summary"):
        write_report(tmp_path, ["not", "a", "dict"], {})
    with pytest.raises(DebugAtlasError, match="report_data"):
        write_report(tmp_path, complete({}), "nope")


def test_failed_render_leaves_the_old_report_intact(tmp_path, monkeypatch):
    good = write_report(tmp_path, complete({"layer": "good"}), {})
    before = good.read_text(encoding="utf-8")

    def boom(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(report_writer._view, "pairs", boom)
    with pytest.raises(RuntimeError, match="render failed"):
        write_report(tmp_path, complete({"layer": "new"}), {})
    monkeypatch.undo()
    monkeypatch.setattr(report_writer.os, "replace", boom)
    with pytest.raises(RuntimeError, match="render failed"):
        write_report(tmp_path, complete({"layer": "newer"}), {})
    assert good.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]


def _section(html: str, section_id: str) -> str:
    start = html.index(f'<section id="{section_id}"')
    return html[start:html.index("</section>", start)]


def test_findings_lead_the_page_with_statement_pictures_and_suspects(full):
    _, _, _, html = full
    main = html[html.index("<main>"):]
    assert main.index('id="findings"') < main.index('id="overview"') < main.index('id="pairs"')
    findings = _section(html, "findings")
    assert "2</b> confirmed findings in 1 of 2 studied pairs" in findings
    assert "1</b> of them flagged as a suspected shortcut" in findings
    assert FINDING_STATEMENT in findings
    # The suspect has no statement: the sentence is written from its numbers, and it comes first.
    written = ("Pasting this feature on images of 3 makes the model say 8 in 30 % of them [21–41 %], "
               "against 2 % for noise and 4 % for a crop of a real 8.")
    assert written in findings
    assert findings.index("Suspected shortcuts") < findings.index(written) < findings.index(FINDING_STATEMENT)
    # only the first finding's patches are all synthesised; the suspect's summary says nothing of it
    badge = '<span class="badge synthesized">synthesised patches only</span> '
    assert findings.count(badge) == 1 and badge + FINDING_STATEMENT in findings
    assert findings.count("2 crops of real images from the cell were measured on held-out images and did not "
                          "beat both controls") == 1
    # report_data's crops and patch image for cell (0, 3); the summary patch's file for the suspect.
    assert 'src="exemplars/pair1_finding_0.png"' in findings
    assert 'src="patches/pair1_cell0.png"' in findings and 'src="patches/pair1_cell1.png"' in findings
    assert "held-out images" in findings and "seed 0 · selection 0.5 · confirmation 0.5" in findings
    # why it is suspected, in its own numbers: exemplars, its real crop held out, how rare it is elsewhere
    said = " ".join(findings.split())
    assert ("80 % of its exemplars are images of 8. 3 of the 3 crops of real images from it measured on held-out "
            "images of 3 beat the noise patch (2 beat both controls);") in said
    assert "(pair1-1-ex0)</span> sends 50 % [33–67 %] of 30 images to 8 (noise patch 2 %, crop of a real 8 4 %)." in said
    assert ("40 of 50 analysed images of 8 show it, against 1 of 52 of 3, the other class that shows it most "
            "(26× as often in 8).") in said
    assert "It sits at one place: 83 % of its samples fall in one spot of the image" in said
    # its real crops lead its card, then the map of where it sits (two positions, the busier one darkest)
    card = findings[findings.index(written):]
    assert card.index('alt="exemplar"') < card.index('class="position-map"') < card.index('alt="feature icon"')
    assert card.count('fill="#b4461f" fill-opacity="1.00"') == 1 and 'fill-opacity="0.32"' in card


def test_near_miss_and_nothing_confirmed_are_said_plainly(full):
    _, _, _, html = full
    findings = _section(html, "findings")
    hostile = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"Nothing confirmed for {hostile} → 4: of 6 patch tests, 6 not confirmed." in findings
    assert findings.count('class="badge kind-near-miss"') == 1
    assert findings.count("not a mistake it already makes") == 1
    assert "simply part of" not in findings
    assert f"{hostile} → 4 (near miss)</a>" in html
    assert html.count('class="badge kind-near-miss"') == 2  # Findings and the pair's own heading


def test_no_findings_says_nothing_confirmed(tmp_path):
    patches = [{"id": f"p{n}", "placement": "static", "flip_rate": 0.5, "noise_flip_rate": 0.1,
                "natural_flip_rate": 0.6, "verdict": "natural"} for n in range(3)]
    summary = {"classes": ["cat", "dog"], "config": {},
               "pairs": [{"a": "cat", "b": "dog", "findings": [], "patches": patches}]}
    findings = _section(render_report(complete(summary), {}, tmp_path), "findings")
    assert "Nothing confirmed: no patch test in the 1 studied pair beat both of its controls." in findings
    assert "Nothing confirmed for cat → dog: of 3 patch tests, 3 natural." in findings
    assert "so the feature is simply part of dog" in findings
    assert "This run recorded no held-out split" in findings
    assert "nothing was tested" in _section(render_report(complete({}), {}, tmp_path), "findings")
    summary["pairs"][0]["patches"] = []
    findings = _section(render_report(complete(summary), {}, tmp_path), "findings")
    assert "no patch test was run in this run" in findings and "beat both" not in findings


def test_a_confirmed_patch_row_is_a_finding_only_when_the_run_lists_it(tmp_path):
    patches = [{"id": "p1", "flip_rate": 0.6, "verdict": "confirmed"}, {"id": "p2", "flip_rate": 0.7, "verdict": "confirmed"}]
    summary = complete({"pairs": [{"a": "cat", "b": "dog", "patches": patches,
                                   "findings": [{"cell": [1, 1], "patch": "p1", "statement": "SHOWN"}]}]})
    findings = _section(render_report(summary, {}, tmp_path), "findings")
    assert "SHOWN" in findings
    assert "1</b> confirmed finding in 1 of 1 studied pair." in findings


def test_user_strings_in_findings_are_escaped(tmp_path):
    summary = {"pairs": [{"a": HOSTILE_CLASS, "b": HOSTILE_LAYER, "kind": "near_miss", "findings": [
        {"cell": [1, 1], "statement": HOSTILE_TEXT, "patch": HOSTILE_TEXT, "suspected_shortcut": True},
        {"cell": [2, 2], "flip_rate": 0.5, "statement": sentence(HOSTILE_CLASS, HOSTILE_LAYER, 0.5, None, None, None)}]}]}
    html = render_report(complete(summary), {}, tmp_path)
    for raw in (HOSTILE_CLASS, HOSTILE_LAYER, HOSTILE_TEXT):
        assert raw not in html
    findings = _section(html, "findings")
    assert "&lt;/script&gt;&lt;script&gt;window.__pwned=1&lt;/script&gt;&lt;!--" in findings
    assert ("Pasting this feature on images of &lt;script&gt;alert(1)&lt;/script&gt; makes the model "
            "say &lt;img src=x onerror=&#34;window.__pwned=1&#34;&gt; in 50 % of them.") in findings
    assert html.count("<script") == 2


def test_only_confirmed_patch_rows_are_coloured_as_findings(full):
    _, _, _, html = full
    rows = re.findall(r'<tr class="row-([a-z_]+)">.*?<td class="candidate">([^<]*)', html, re.S)
    by_candidate = {candidate.strip(): kind for kind, candidate in rows}
    assert by_candidate == {"pair1-0-static": "confirmed", "pair1-0-dynamic": "confirmed",
                            "pair1-1-static": "natural", "pair1-1-dynamic": "natural",
                            "pair1-2-static": "not_confirmed", "pair1-2-dynamic": "not_confirmed",
                            **{f"pair2-{c}-{p}": "not_confirmed" for c in range(3)
                               for p in ("static", "dynamic")}}
    first = html[html.index('<tr class="row-confirmed">'):]
    assert "[35–55 %]" in first[:first.index("</tr>")] and "&lt; 0.001" in first[:first.index("</tr>")]


def test_confirmed_rows_come_first_and_the_rest_fold_away(tmp_path):
    patches = [{"id": f"p{n}", "flip_rate": n / 20, "verdict": "not_confirmed"} for n in range(11)]
    patches[9]["verdict"] = "confirmed"
    summary = {"pairs": [{"a": "cat", "b": "dog", "patches": patches}]}
    html = render_report(complete(summary), {}, tmp_path)
    shown, folded = html.split("more patch tests</summary>")
    candidates = re.findall(r'<td class="candidate">([^<]*)', shown)
    assert [c.strip() for c in candidates] == ["p9", "p0", "p1", "p2", "p3", "p4", "p5", "p6"]
    assert "<summary>3 more patch tests</summary>" in html
    assert re.findall(r'<td class="candidate">([^<]*)', folded)[:3] == ["p7", "p8", "p10"]


def test_cells_with_score_zero_or_less_are_not_listed(full, tmp_path):
    _, _, _, html = full
    pairs = _section(html, "pairs")
    assert "(7, 7)" not in pairs and pairs.count("1 ranked cell with a score of 0 or less") == 2
    summary = {"pairs": [{"a": "cat", "b": "dog", "confusing_cells": [
        {"cell": [1, 2], "score": 0.5}, {"cell": [3, 4], "score": 0.0}, {"cell": [5, 6], "score": -1.0}]}]}
    pairs = _section(render_report(complete(summary), {}, tmp_path), "pairs")
    assert "(1, 2)" in pairs and "(3, 4)" not in pairs and "(5, 6)" not in pairs
    assert "2 ranked cells with a score of 0 or less" in pairs
    summary["pairs"][0]["confusing_cells"] = [{"cell": [3, 4], "score": -0.1}]
    assert "No cell pushes cat toward dog" in render_report(complete(summary), {}, tmp_path)


def test_gauge_and_verdict_helpers():
    from debugatlas.report import _findings

    assert _findings.gauge(0.41, (0.33, 0.49), 0.02, 1.5) == {
        "flip": 41.0, "lo": 33.0, "width": 16.0, "noise": 2.0, "natural": 100.0}
    rows = [{"verdict": _findings.verdict(v)} for v in ("not_confirmed", None, "confirmed", "natural", "natural")]
    assert _findings.verdict_counts(rows) == [("confirmed", 1), ("natural", 2), ("not confirmed", 1),
                                              ("no verdict", 1)]


def test_cells_of_confirmed_findings_are_marked_on_the_main_grid_only(full, tmp_path):
    blob = _json_blob(full[3])
    assert [g["marks"] for g in blob["grids"]] == [[], [[0, 3, "3 → 8"], [1, 3, "3 → 8"]]]
    assert "Cells of confirmed findings are outlined in green." in full[3]
    summary = {"config": {"grid_size": 4}, "pairs": [{"a": "x", "b": "y", "findings": [
        {"cell": [1, 2]}, {"cell": [9, 9]}]}]}
    rd = {"atlases": [{"grid_size": g, "cells": []} for g in (4, 8)]}
    html = render_report(complete(summary), rd, tmp_path)
    assert [g["marks"] for g in _json_blob(html)["grids"]] == [[[1, 2, "x → y"]], []]
    summary["pairs"][0]["findings"] = []
    assert "outlined in green" not in render_report(complete(summary), rd, tmp_path)


def test_the_split_is_said_in_a_few_words(tmp_path):
    from debugatlas.report import _view

    split = {"rule": "per class, by a seeded hash", "seed": 3, "fraction": 0.5,
             "selection": {"n_images": 266, "per_class": {"0": 31}},
             "confirmation": {"n_images": 1273, "per_class": {"0": 31}}}
    def said(config):
        return _view.held_out(RunRecord.from_dict(complete({"config": config})))

    assert said({"split": split}) == "seed 3 · fraction 0.5 · selection 266 images · confirmation 1,273 images"
    assert said({"split": {"rule": "x"}}) is None
    assert said({}) is None and said({"split": True}) is None


def test_a_finding_says_what_its_misclassified_images_hold_besides_it(tmp_path):
    co = {"images": 7, "images_correct": 5, "cells": [
        {"cell": [3, 3], "images": 6, "share": 6 / 7, "share_correct": 0.2, "finding": 2},
        {"cell": [0, 3], "images": 2, "share": 2 / 7, "share_correct": None, "finding": None}]}
    found = [{"cell": [1, 1], "patch": "p1", "statement": "FIRST", "co_occurrence": co},
             {"cell": [2, 2], "patch": "p1", "statement": "SECOND",
              "co_occurrence": {"images": 0, "images_correct": 3, "cells": []}}]
    summary = complete({"pairs": [{"a": "cat", "b": "dog", "confused": 9, "findings": found,
                                   "patches": [{"id": "p1", "flip_rate": 0.6, "verdict": "confirmed"}]}]})
    text = " ".join(_section(render_report(summary, {}, tmp_path), "findings").split())
    assert ("In the 7 images of cat called dog that hold it, it comes with cell (3, 3) (finding 2) in 6 "
            "(86 %; 20 % of the 5 it gets right) and cell (0, 3) in 2 (29 %).") in text
    assert ("None of the 9 images of cat the model calls dog holds it: it can push cat toward dog, "
            "but is not what the model reads in those mistakes.") in text
    for f in found:  # when no finding of the pair is held by a mistake, the page says so once
        f["co_occurrence"] = {"images": 0, "images_correct": 3, "cells": []}
    summary = complete({"pairs": [{"a": "cat", "b": "dog", "confused": 9, "findings": found,
                                   "patches": [{"id": "p1", "flip_rate": 0.6, "verdict": "confirmed"}]}]})
    text = " ".join(_section(render_report(summary, {}, tmp_path), "findings").split())
    assert text.count("None of the 9 images") == 1
    assert ("None of the 9 images of cat the model calls dog holds any of these features: they can push cat "
            "toward dog, but are not what the model reads in those mistakes.") in text


def test_patches_that_act_together_are_said_in_findings_and_tabled_in_the_pair(tmp_path):
    rows = [{"patches": ["c1-1-icon", "c5-5-icon"], "first_cell": [1, 1], "second_cell": [5, 5], "n_images": 58,
             "flip_rate": 0.9, "flip_rate_ci": [0.79, 0.95], "first_alone": 0.03, "second_alone": 0.05,
             "noise_flip_rate": 0.1, "p_value": 1e-18, "verdict": "together"},
            {"patches": ["c1-1-icon", "c7-7-ex0"], "first_cell": [1, 1], "second_cell": [7, 7], "n_images": 58,
             "flip_rate": 0.05, "flip_rate_ci": [0.02, 0.14], "first_alone": 0.03, "second_alone": 0.04,
             "noise_flip_rate": 0.1, "p_value": 1.0, "verdict": "not_together"}]
    summary = complete({"pairs": [{"a": "cat", "b": "dog", "confused": 4, "findings": [], "composition": rows,
                                   "patches": [{"id": "c1-1-icon", "flip_rate": 0.03, "verdict": "not_confirmed"}]}]})
    html = render_report(summary, {}, tmp_path)
    findings = " ".join(re.sub(r"<[^>]+>", "", _section(html, "findings")).split())
    assert ("Cells (1, 1) and (5, 5) act together: pasted at once, their patches make the model say dog in 90 % "
            "[79–95 %] of 58 held-out images of cat, against 3 % and 5 % for each alone and 10 % for two noise "
            "patches.") in findings
    assert "(7, 7) act together" not in findings and "Nothing confirmed for cat → dog" in findings
    detail = " ".join(html.split())
    assert "<h3>Patches together</h3>" in detail and "c1-1-icon + c7-7-ex0" in detail and "not together" in detail
