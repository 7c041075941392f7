"""Plots: each writes a non-empty PNG, also for degenerate and step-less results."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import ppllm
from ppllm.results import Posterior, plots
from ppllm.testing.toys import NoRepeat

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > 2000, f"{path} is suspiciously small ({len(data)} bytes)"


@pytest.fixture(scope="module")
def run() -> Posterior:
    return ppllm.smc(NoRepeat(max_tokens=3), 8, seed=2, ess_threshold=1.0)


def test_per_run_plots(run, tmp_path) -> None:
    paths = plots.plot_all(run, tmp_path / "sub")
    assert [p.name for p in paths] == ["diagnostics.png", "genealogy.png", "answers.png"]
    for p in paths:
        assert_png(p)


def test_answers_from_a_mapping_with_truth(tmp_path) -> None:
    assert_png(plots.plot_answers({"42": 0.7, "41": 0.2, "7": 0.1}, tmp_path / "a.png", truth="42"))


def test_degenerate_and_stepless_posteriors_still_plot(tmp_path) -> None:
    dead = Posterior(["x", "y"], np.full(2, -math.inf), -math.inf, message="every particle violated the constraint")
    bare = Posterior(["x", "y", "z"], np.zeros(3), 0.0)
    for post, name in [(dead, "dead"), (bare, "bare")]:
        for p in plots.plot_all(post, tmp_path, prefix=f"{name}-"):
            assert_png(p)


def test_scaling_from_dict_and_json(tmp_path) -> None:
    results = {
        "smc": {"4": 0.4, "16": 0.6, "64": 0.8},
        "best_of_n": [[4, 0.35], [16, 0.5], [64, 0.55]],
        "majority_vote": [{"budget": 4, "accuracy": 0.3, "stderr": 0.05}, {"budget": 16, "accuracy": 0.45, "stderr": 0.05}],
    }
    assert_png(plots.plot_scaling(results, tmp_path / "s.png"))
    f = tmp_path / "scaling.json"
    f.write_text(json.dumps(results))
    assert_png(plots.plot_scaling(f, tmp_path / "s2.png"))
