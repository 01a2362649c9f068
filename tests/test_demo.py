"""`debugatlas demo` analyses the shipped weights, and the README says what that run shows.

The README's table "Results on the embedded default" names, per scenario, the accuracy, the
studied pairs with their confusion counts, and whether real crops confirm anything (and, for the
planted cross, that it is a suspected shortcut). The demo's model ships in `debugatlas/weights/`,
so these claims hold on every machine; a change that moves them updates the README in the same
commit (`make demo`, `make shortcut`).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from debugatlas.demo import demo_weights

pytestmark = pytest.mark.slow  # a full analysis per scenario (about 10 s each on two cores)

README = Path(__file__).resolve().parent.parent / "README.md"
RUNS = {"natural": "`make demo`", "shortcut": "`make shortcut`"}
PAIR = re.compile(r"(\S+) → (\S+) \((?:(\d+) confused|near miss)\)")


def readme_claims(command: str) -> dict:
    """Accuracy, pairs [(a, b, confused or None)] and per pair whether real crops confirm anything and
    whether its top finding is a suspected shortcut, from the README table rows of `command`."""
    text = README.read_text()
    table = text[text.index("## Results on the embedded default"):text.index("## Results on CIFAR-10")]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()
            if line.startswith("|") and not line.startswith("|---")]
    start = next(i for i, r in enumerate(rows) if command in r[0])
    end = next((i for i in range(start + 1, len(rows)) if rows[i][0]), len(rows))  # a run's pairs: rows below it
    mine = rows[start:end]
    accuracy = float(re.search(r"acc\. ([\d.]+) %", rows[start][0]).group(1)) / 100
    pairs, confirmed, shortcut = [], [], []
    for row in mine:
        a, b, n = PAIR.search(row[1]).groups()
        pairs.append((a, b, int(n) if n is not None else None))
        confirmed.append(not row[3].startswith("nothing confirmed"))  # "... by real crops" included
        shortcut.append("suspected shortcut" in row[3])
    return {"accuracy": accuracy, "pairs": pairs, "confirmed": confirmed, "shortcut": shortcut}


def test_readme_table_parses():
    for command in RUNS.values():
        claims = readme_claims(command)
        assert 0 < claims["accuracy"] <= 1 and claims["pairs"], command


@pytest.mark.parametrize("scenario", list(RUNS))
def test_demo_shows_what_the_readme_says(scenario, demo_run):
    assert demo_weights(scenario).is_file(), "the demo's weights ship in the package (pyproject package-data)"
    out, result = demo_run(scenario)
    summary = result.summary
    claims = readme_claims(RUNS[scenario])
    pairs = [(p["a"], p["b"], p["confused"] if p["kind"] == "confused" else None) for p in summary["pairs"]]
    assert pairs == claims["pairs"]
    assert round(summary["accuracy"] * 100, 1) == pytest.approx(claims["accuracy"] * 100)
    # real crops (exemplars of the cell, crops of its icon) hold on every CPU; a synthesised-only
    # finding follows the layout's cells, which another CPU's rounding moves (README, Reproducibility)
    real = [any(not f["synthesized_only"] for f in p["findings"]) for p in summary["pairs"]]
    assert real == claims["confirmed"]
    top_flags = [bool(p["findings"]) and bool(p["findings"][0]["suspected_shortcut"]) for p in summary["pairs"]]
    assert top_flags == claims["shortcut"]
    assert (out / "index.html").is_file()


def test_the_planted_cross_is_one_flagged_finding_in_each_pair_whatever_cells_it_spans(demo_run):
    """The cross falls in several atlas cells; each pair reports it once, as a suspected shortcut."""
    from debugatlas.data import digits
    from debugatlas.demo import IMAGE_SIZE, SHORTCUT

    _, val = digits(size=IMAGE_SIZE, seed=0, shortcut=SHORTCUT, poison_val=True)
    _, result = demo_run("shortcut")
    for pair in result.record.pairs:
        carry = [f for f in pair.findings
                 if sum(bool(val.poisoned[i]) for i in f.exemplar_ids) >= 0.5 * len(f.exemplar_ids) > 0]
        assert len(carry) == 1 and pair.findings[0] is carry[0], pair.name
        assert carry[0].suspected_shortcut, pair.name
        assert len(carry[0].cells) >= 1 and all(c.flip_rate is not None for c in carry[0].cells)
        # the trigger is in the vectors, not in one layout: found again in other seeds and settings
        assert carry[0].stability["of"] == 5 and carry[0].stability["recurred"] >= 4, carry[0].stability
