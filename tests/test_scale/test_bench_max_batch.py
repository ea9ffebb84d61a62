"""The largest-batch search of experiments/bench_train.py (its GPU part cannot run here: the search is
checked against a memory model)."""

import math
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "bench_train.py"


@pytest.fixture(scope="module")
def bench() -> SimpleNamespace:
    return SimpleNamespace(**runpy.run_path(str(SCRIPT)))  # not run as __main__: nothing is measured


@pytest.mark.parametrize(("capacity", "start"), [(37, 8), (37, 64), (1, 1), (8, 8), (100, 3), (0, 4)])
def test_finds_the_largest_batch_that_fits(bench, capacity, start):
    tried = []

    def fits(n):
        tried.append(n)
        return 0.5 * n if n <= capacity else None

    best, peak = bench.largest_fitting(fits, start)
    assert best == capacity
    assert peak == 0.5 * capacity if capacity else math.isnan(peak)  # nothing fits: no peak
    assert len(tried) <= 2 * max(capacity, start).bit_length() + 2  # doubling + bisection, not a scan


def test_stops_at_the_limit_when_everything_fits(bench):
    assert bench.largest_fitting(lambda n: 1.0, start=8, limit=100) == (100, 1.0)


def test_max_batch_mode_is_skipped_on_a_cpu(bench, capsys):
    bench.run(bench.parse_args(["--input", "64", "--batch", "1", "--steps", "1", "--rounds", "1", "--workers", "0",
                                "--device", "cpu", "--max-batch"]))
    lines = capsys.readouterr().out.strip().splitlines()
    assert "full_ips=" in lines[-2] and lines[-1].startswith("max_batch=skipped")


def test_only_max_batch_measures_nothing_else(bench, capsys):
    assert bench.run(bench.parse_args(["--batch", "1", "--device", "cpu", "--only-max-batch"])) == []
    assert capsys.readouterr().out.strip().splitlines() == [
        "max_batch=skipped (needs a CUDA device: CPU memory is not the limit being searched)"]
