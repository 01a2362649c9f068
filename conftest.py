"""Shared pytest fixtures: the embedded digits data and a small CNN trained on it once per session.

`choosing_precision="auto"` resolves to bfloat16 on a CPU with native bfloat16 (AVX512-BF16, AMX)
and to float32 elsewhere (`debugatlas.core.model.fast_precision`), so one machine runs only one of
the two. Force either for the whole suite, on any machine:

    .venv/bin/python -m pytest --choosing-precision float32
    DEBUGATLAS_TEST_PRECISION=bfloat16 .venv/bin/python -m pytest    # the same, for `make test`

Every analysis whose `choosing_precision` is "auto" then runs at the forced precision (tests that
name a precision keep theirs; the golden run takes the forced one too). Subprocesses started by a
test (DDP, wheel, fresh-process tests) resolve "auto" themselves. A CPU without AVX-512 is
emulated with `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` (oneDNN then reports no native
bfloat16 and "auto" gives float32, as on such a machine); `.ci/run` runs the precision-sensitive
tests both ways.
"""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

PRECISION_ENV = "DEBUGATLAS_TEST_PRECISION"
FORCEABLE = ("float32", "bfloat16")


def pytest_addoption(parser) -> None:
    parser.addoption("--choosing-precision", choices=FORCEABLE, default=os.environ.get(PRECISION_ENV) or None,
                     help=f"resolve choosing_precision='auto' to this precision in every test "
                          f"(default: ${PRECISION_ENV}, else what the CPU runs natively)")


def pytest_configure(config) -> None:
    forced = config.getoption("--choosing-precision")
    if forced is None:
        return
    if forced not in FORCEABLE:  # from the environment variable, which argparse does not check
        raise pytest.UsageError(f"{PRECISION_ENV}={forced!r} is not one of {list(FORCEABLE)}.")
    import importlib

    def forced_precision(device) -> str:
        return forced

    # by module name: `import debugatlas.pipeline.analyze as m` gives the package's `analyze` function
    for name in ("debugatlas.core.model", "debugatlas.pipeline.analyze"):  # analyze.py holds its own reference
        importlib.import_module(name).fast_precision = forced_precision


def pytest_report_header(config) -> str:
    from debugatlas.core.model import fast_precision

    forced = config.getoption("--choosing-precision")
    return f"choosing_precision='auto' on cpu: {fast_precision('cpu')}" + (" (forced)" if forced else "")


@pytest.fixture(scope="session")
def forced_precision(request) -> str | None:
    """The precision forced for the suite ("float32" | "bfloat16"), or None."""
    return request.config.getoption("--choosing-precision")


@pytest.fixture(scope="session")
def digits_data():
    """(train, val) digits at 24 px."""
    from debugatlas.data import digits

    return digits(size=24)


@pytest.fixture(scope="session")
def trained_cnn(digits_data):
    """SmallCNN(width=8) trained for 3 epochs on the digits train split (seeded), in eval mode."""
    from debugatlas.models import SmallCNN, train_classifier

    torch.manual_seed(0)
    return train_classifier(SmallCNN(1, 10, width=8), digits_data[0], epochs=3, seed=0)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`demo_run(scenario)`: the demo's run directory and result, run once per session per scenario."""
    from debugatlas.demo import run_demo

    done: dict = {}

    def run(scenario: str):
        if scenario not in done:
            out = tmp_path_factory.mktemp(f"demo_{scenario}") / scenario
            done[scenario] = (out, run_demo(out, scenario=scenario))
        return done[scenario]

    return run
