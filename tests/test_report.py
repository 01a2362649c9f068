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
from PIL import Image

from debugatlas.core import DebugAtlasError
from debugatlas.report import render_report, script_json, write_report
from debugatlas.report import writer as report_writer

HOSTILE_CLASS = "<script>alert(1)</script>"
HOSTILE_LAYER = '<img src=x onerror="window.__pwned=1">'
HOSTILE_TEXT = "</script><script>window.__pwned=1</script><!--"
CLASSES = [str(d) for d in range(9)] + [HOSTILE_CLASS]


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
        occupied[grid // 2, grid // 2] = True
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
            entry.update(grid_image=image, image=image)
        elif grid <= 20:
            entry.update(grid_image=image)
        else:
            entry.update(image=image)
        atlases.append(entry)

    def pair(a: str, b: str, n: int) -> tuple[dict, dict]:
        stem = f"pair{n}"
        for name in ("filtered_a", "filtered_b", "comparison"):
            files[f"{stem}_{name}.png"] = _atlas_png(rng, 10, rng.random((10, 10)) < 0.6, px=320)
        cells = [{"cell": [int(c), 3], "score": float(3 - 0.4 * c), "count": int(40 - 3 * c),
                  "attribution_a": float(0.5 - 0.1 * c), "attribution_b": float(0.9 - 0.2 * c),
                  "icon": icons[c % 6], "exemplars": exemplars[c:c + 6]} for c in range(5)]
        misclassified = []
        for m in range(6):
            image, heat = f"examples/{stem}_{m}.png", f"examples/{stem}_{m}_heat.png"
            files[image] = _blob(rng, 24, 1)
            heatmap = np.zeros((24, 24, 4))
            heatmap[..., 0], heatmap[..., 3] = 1.0, _blob(rng, 24, 1)
            files[heat] = heatmap
            misclassified.append({"id": 100 + m, "image": image, "heatmap": heat, "p_b": 0.5 + m / 15})
        table, patches = [], []
        for c in range(3):
            file = f"patches/{stem}_cell{c}.png"
            files[file] = _blob(rng, 16)
            for placement, boost in (("static", 0.0), ("dynamic", 0.2), ("random", -0.1)):
                flip = max(0.0, 0.45 - 0.15 * c + boost)
                table.append({"candidate": f"cell ({c}, 3)", "source": "icon", "placement": placement,
                              "flip_rate": flip, "noise_flip_rate": 0.04 + boost / 4,
                              "natural_flip_rate": 0.08 + boost / 3, "p_b_before": 0.02,
                              "p_b_after": flip * 0.9, "n_images": 80, "file": file})
                if placement != "random":
                    patches.append({"id": f"{stem}-{c}-{placement}", "cell": [c, 3], "file": file,
                                    "target": b, "size_frac": 0.2, "placement": placement,
                                    "n_images": 80, "flip_rate": flip, "noise_flip_rate": 0.05,
                                    "natural_flip_rate": 0.1})
        rd = {"a": a, "b": b, "confused": int(cm[CLASSES.index(a), CLASSES.index(b)]),
              "notes": [f"only {n + 5} misclassified images of {a}"],
              "filtered_a": f"{stem}_filtered_a.png", "filtered_b": f"{stem}_filtered_b.png",
              "comparison": f"{stem}_comparison.png", "cells": cells,
              "misclassified": misclassified, "patch_table": table}
        sm = {"a": a, "b": b, "patches": patches, "confusing_cells": [
            {"cell": c["cell"], "score": c["score"], "count": c["count"],
             "attribution_a": c["attribution_a"], "attribution_b": c["attribution_b"],
             "exemplar_ids": [1, 2, 3], "icon": c["icon"]} for c in cells]}
        return rd, sm

    rd1, sm1 = pair("3", "8", 1)
    rd2, sm2 = pair(HOSTILE_CLASS, "4", 2)
    summary = {
        "schema_version": 1, "layer": HOSTILE_LAYER, "num_samples": 4321, "accuracy": 0.9123,
        "classes": CLASSES, "confusion_matrix": cm.tolist(), "pairs": [sm1, sm2],
        "timings_s": {"capture": 1.2, "attribution": 3.4, "layout": 8.9, "render": 20.5,
                      "patches": 6.1, "total": 40.1},
        "config": {"grid_sizes": list(grid_sizes), "note": HOSTILE_TEXT},
        "versions": {"debugatlas": "0.1.0", "torch": "2.x", "python": "3.11"},
    }
    report_data = {
        "title": "Digits: why 3 becomes 8", "model": "SmallCNN(width=8) " + HOSTILE_TEXT,
        "data": "sklearn digits, 24×24 & friends", "seed": 0,
        "score_description": "count_a × relu(attribution to B − attribution to A) " + HOSTILE_TEXT,
        "atlases": atlases, "pairs": [rd1, rd2],
        "suite": {"dir": "suite/", "check_command": "debugatlas check --suite suite/ --model m:f --data d/"},
    }
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
    assert [g["grid_image"] for g in blob["grids"]] == ["atlas_10.png", "atlas_20.png"]


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
    for heading in ("Run", "Confusion matrix", "Most confused pairs", "Class-filtered atlases",
                    "Comparison atlas", "Confusing features, ranked", "Patch tests",
                    "Patch suite and CI check", "Activation atlas"):
        assert f">{heading}</h" in html, heading
    assert "Not in this report" not in html
    assert "debugatlas check --suite suite/ --model m:f --data d/" in html
    assert html.count('<th scope="colgroup"') == 6
    assert "image missing" not in html and "file not found" not in html


def test_missing_sections_are_named_not_broken(tmp_path):
    html = write_report(tmp_path, {}, {}).read_text(encoding="utf-8")
    for text in ("Not in this report", "No confused pair was analysed",
                 "No activation atlas was rendered", "No patch suite was saved",
                 "no usable confusion matrix"):
        assert text in html, text
    broken = {"classes": "oops", "confusion_matrix": [[1, 2], [3]], "pairs": "x",
              "timings_s": {"layout": float("nan")}, "accuracy": "high"}
    rd = {"atlases": [{"grid_size": 0}, {"grid_size": 4, "cells": [{"cell": [9, 9]}, {"cell": "x"}]}],
          "pairs": [{"a": "cat", "b": "dog", "cells": [{}], "patch_table": [{}], "misclassified": [{}]}],
          "suite": {"dir": None}}
    html = write_report(tmp_path, broken, rd).read_text(encoding="utf-8")
    assert "cat" in html and "No activation atlas" not in html
    assert "No patch suite was saved" in html
    summary_only = {"classes": ["cat", "dog"], "confusion_matrix": [[5, 2], [1, 6]],
                    "pairs": [{"a": "cat", "b": "dog", "confusing_cells": [{"cell": [1, 2], "score": 2.0}],
                               "patches": [{"id": "p1", "placement": "static", "flip_rate": 0.5}]}]}
    html = write_report(tmp_path, summary_only).read_text(encoding="utf-8")
    assert "(1, 2)" in html and "50.0 %" in html and "No misclassified examples" in html
    assert "Exemplar crops were not saved" in html


def test_icon_atlas_backs_the_main_grid(tmp_path):
    _png(tmp_path / "icon_atlas.png", np.ones((40, 40, 3)))
    rd = {"icon_atlas": "icon_atlas.png",
          "atlases": [{"grid_size": g, "image": None, "cells": [{"cell": [1, 1], "count": 3}]}
                      for g in (10, 20)]}
    blob = _json_blob(render_report({"config": {"grid_size": 20}}, rd, tmp_path))
    assert [g["grid_image"] for g in blob["grids"]] == [None, "icon_atlas.png"]
    assert blob["initial"] == 1 and blob["grids"][1]["cells"] == [[1, 1, 3, [], [], [], None]]


def test_image_paths_outside_the_folder_are_not_linked(tmp_path):
    rd = {"pairs": [{"a": "a", "b": "b", "filtered_a": "/etc/passwd", "filtered_b": "../x.png",
                     "comparison": "javascript:alert(1)",
                     "misclassified": [{"id": 1, "image": "examples/missing.png"}]}]}
    html = render_report({}, rd, tmp_path)
    assert "/etc/passwd" in html and 'src="/etc' not in html and 'src="..' not in html
    assert 'src="javascript' not in html and "file not found" in html


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(DebugAtlasError, match="summary"):
        write_report(tmp_path, ["not", "a", "dict"], {})
    with pytest.raises(DebugAtlasError, match="report_data"):
        write_report(tmp_path, {}, "nope")


def test_failed_render_leaves_the_old_report_intact(tmp_path, monkeypatch):
    good = write_report(tmp_path, {"layer": "good"}, {})
    before = good.read_text(encoding="utf-8")

    def boom(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(report_writer._view, "pairs", boom)
    with pytest.raises(RuntimeError, match="render failed"):
        write_report(tmp_path, {"layer": "new"}, {})
    monkeypatch.undo()
    monkeypatch.setattr(report_writer.os, "replace", boom)
    with pytest.raises(RuntimeError, match="render failed"):
        write_report(tmp_path, {"layer": "newer"}, {})
    assert good.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]
