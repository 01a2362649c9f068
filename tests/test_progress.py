"""core/progress.py: one bar across the stages, silent unless asked, the share done by stage weight."""
from __future__ import annotations

import io

import pytest

from debugatlas.core import DebugAtlasError
from debugatlas.core.progress import RunProgress, progress_bar


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_fraction_follows_stage_weights_and_updates():
    out = io.StringIO()
    run = RunProgress([("capture", 1), ("layout", 3), ("render", 0), ("patches", 4)], enabled=True, file=out)
    with run.stage("capture"):
        run.update(1, 2)
        assert run.fraction == pytest.approx(0.5 / 8)
    assert run.fraction == pytest.approx(1 / 8)
    with run.stage("patches"):  # layout and render skipped: counted as done on entry
        assert run.fraction == pytest.approx(4 / 8)
        run.callback()(3, 4)
        assert run.fraction == pytest.approx(7 / 8)
        run.update(1, 4)  # never backwards
        assert run.fraction == pytest.approx(7 / 8)
    run.close()
    assert run.fraction == 1.0
    text = out.getvalue()
    assert "debugatlas (patches)" in text and "100%" in text and "<" in text  # elapsed<remaining


def test_silent_when_not_interactive_unless_asked():
    quiet = io.StringIO()
    with RunProgress([("a", 1), ("b", 1)], file=quiet) as run:  # enabled=None, not a terminal
        assert not run.enabled and run.callback() is None
        with run.stage("a"):
            run.update(1, 1)
    assert quiet.getvalue() == "" and run.fraction == 1.0
    tty = Tty()
    with RunProgress([("a", 1)], file=tty) as shown:
        assert shown.enabled and shown.callback() == shown.update
        with shown.stage("a"):
            pass
    assert "100%" in tty.getvalue()
    assert progress_bar(False, "x") is None and callable(progress_bar(True, "x"))


def test_bad_stages_are_refused_with_a_hint():
    for stages in ([], [("a", 1), ("a", 2)], [("a", -1)]):
        with pytest.raises(DebugAtlasError, match="HINT"):
            RunProgress(stages)
    run = RunProgress([("a", 1)], enabled=False)
    with pytest.raises(DebugAtlasError, match=r"not one of the stages \['a'\]"):
        with run.stage("b"):
            pass
    zero = RunProgress([("a", 0), ("b", 0)], enabled=False)  # no weights: equal shares
    with zero.stage("b"):
        assert zero.fraction == 0.5


def test_a_stage_shows_what_it_works_on_beside_its_name():
    from dataclasses import replace

    import torch
    from torch import nn

    from debugatlas.pipeline.config import AnalysisConfig
    from debugatlas.pipeline.context import RunContext

    out = Tty()
    run = RunProgress([("capture", 1), ("patches", 1)], file=out)
    ctx = RunContext(nn.Identity(), "x", nn.Identity(), None, torch.device("cpu"), 0, AnalysisConfig(), progress=run)
    with run.stage("capture"):
        ctx.bar()(1, 2)
    with run.stage("patches"):
        ctx.bar("cat->dog")(1, 2)
        assert run.detail == "cat->dog" and run.fraction == pytest.approx(0.75)
    assert run.detail is None
    text = out.getvalue()
    assert "debugatlas (capture)" in text and "debugatlas (patches: cat->dog)" in text
    assert "capture:" not in text
    assert replace(ctx, progress=None).bar("cat->dog") is None  # progress off: no callback
