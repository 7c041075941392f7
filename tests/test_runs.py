"""The data-set runner: batched rounds equal one-at-a-time runs, kills and Ctrl-C resume to the
same directory, and a directory of another recipe is refused.

Batch invariance is checked on the toy LM, whose answers are exact per request: the particles
file of a run with 64 prompt-rounds per round is byte-identical to one with one per round,
for SMC, particle filtering (both weightings), particle Gibbs and best-of-N. Kills are real:
a subprocess `ppllm run` is SIGKILLed (and, separately, interrupted with SIGINT) after a
growing number of recorded prompt-rounds, restarted until it finishes, and its directory is
compared with an uninterrupted run's (timings aside).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr

from ppllm.cli import main
from ppllm.engine import Engine, SharedRounds
from ppllm.recipes import load_recipe
from ppllm.results import load_arviz

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = '["b", "cab", "a", "bc", "ca", "cc", "ab", "bb"]'


def toy(kernel: str, tmp_path: Path, extra: str = "") -> Path:
    body = {
        "smc": 'name = "smc"\nn_particles = 8\nresampler = "systematic"\ness_threshold = 0.5',
        "pf_ratio": 'name = "particle_filter"\nn_particles = 8\nweighting = "ratio"\nselect = "sample"',
        "pf_puri": 'name = "particle_filter"\nn_particles = 8\nweighting = "puri"',
        "pg": 'name = "particle_gibbs"\nn_particles = 4\nn_iterations = 2',
        "bon": 'name = "best_of_n"\nbudget = 6',
    }[kernel]
    text = f"""[model]
lm = "toy"
vocab = ["a", "b", "c", "<eos>"]
order = 2
seed = 3

[program]
path = "ppllm_models.toy_text:ToyText"
args = {{ max_tokens = 5, banned = "a", penalty = -1.0 }}

[kernel]
{body}

[prompts]
items = {PROMPTS}

[run]
seed = 1
repeats = 2
variables = ["answer", "prefix_score"]
{extra}
"""
    path = tmp_path / f"{kernel}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("kernel", ["smc", "pf_ratio", "pf_puri", "pg", "bon"])
def test_batched_rounds_equal_one_prompt_at_a_time(kernel, tmp_path) -> None:
    recipe = toy(kernel, tmp_path)
    quick = ["--quiet", "--set", "run.plots=0"]  # the particles are compared, not the plots
    assert main(["run", str(recipe), "--out", str(tmp_path / "wide"), *quick, "--set", "run.window=64"]) == 0
    assert main(["run", str(recipe), "--out", str(tmp_path / "one"), *quick, "--set", "run.window=1"]) == 0
    wide, one = (tmp_path / "wide" / "particles.jsonl").read_bytes(), (tmp_path / "one" / "particles.jsonl").read_bytes()
    assert wide == one and wide.count(b"\n") > 16


def test_shared_rounds_batch_many_runs_into_one_call() -> None:
    import ppllm
    from ppllm.testing.toys import FewAs

    shared = SharedRounds()
    runs = shared.run([lambda s=s: ppllm.smc(FewAs(n_chunks=3), 8, seed=s, engine=Engine(shared=shared))
                       for s in range(6)])
    alone = [ppllm.smc(FewAs(n_chunks=3), 8, seed=s) for s in range(6)]
    assert shared.calls < sum(a.budget["lm_calls"] for a in alone) / 4
    for a, b in zip(runs, alone, strict=True):
        assert [str(p) for p in a.particles] == [str(p) for p in b.particles]
        assert (a.log_weights == b.log_weights).all()


# ---------------------------------------------------------------------- resume
def _cli(recipe: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "ppllm.cli", "run", str(recipe), "--out", str(out), "--quiet",
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _lines(out: Path) -> int:
    path = out / "record.jsonl"
    return path.read_text().count("\n") if path.is_file() else 0


def _comparable(out: Path) -> dict:
    record = [json.loads(line) for line in (out / "record.jsonl").read_text().splitlines()]
    for row in record:
        row.pop("seconds")
    posts = {}
    for p in sorted(out.glob("prompt-*/posterior.nc")):
        idata = load_arviz(str(p))
        st = idata["smc_stats"]
        posts[p.parent.name] = (idata["posterior"], idata["particles"], st.drop_vars([v for v in st.data_vars if v == "budget_seconds"]))
    return {"record": record, "particles": (out / "particles.jsonl").read_text(), "posteriors": posts}


def _assert_same(a: dict, b: dict) -> None:
    assert a["record"] == b["record"] and a["particles"] == b["particles"]
    assert a["posteriors"].keys() == b["posteriors"].keys()
    for k in a["posteriors"]:
        for x, y in zip(a["posteriors"][k], b["posteriors"][k], strict=True):
            xr.testing.assert_equal(x, y)


def _big_recipe(tmp_path: Path) -> Path:
    items = json.dumps(["b", "cab", "a", "bc", "ca", "cc", "ab", "bb"] * 5)
    text = toy("smc", tmp_path).read_text().replace(PROMPTS, items).replace("n_particles = 8", "n_particles = 48")
    text = text.replace("repeats = 2", "repeats = 2\nwindow = 4\nplots = 0")
    path = tmp_path / "big.toml"
    path.write_text(text)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_runs_resume_to_the_same_directory(sig, tmp_path) -> None:
    recipe = _big_recipe(tmp_path)
    clean = tmp_path / "clean"
    assert _cli(recipe, clean).wait(timeout=600) == 0
    total = _lines(clean)
    out = tmp_path / "killed"
    kills = 0
    for target in (3, 17, 41):  # kill after a growing number of recorded prompt-rounds
        proc = _cli(recipe, out)
        while _lines(out) < target and proc.poll() is None:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(sig)
            rc = proc.wait(timeout=120)
            kills += 1
            if sig == signal.SIGINT:
                assert rc == 130 and b"rerun the same command to resume" in proc.stderr.read()
                assert (out / "summary.md").is_file()  # the summary of what is done
        assert len({(r["prompt"], r["round"]) for r in map(json.loads, (out / "record.jsonl").read_text().splitlines())}) == _lines(out)
    assert kills >= 2
    assert _cli(recipe, out).wait(timeout=600) == 0
    assert _lines(out) == total  # every prompt-round exactly once
    _assert_same(_comparable(out), _comparable(clean))


def test_a_directory_of_another_recipe_is_refused_and_overwrite_clears_it(tmp_path, capsys) -> None:
    out = tmp_path / "o"
    assert main(["run", str(toy("smc", tmp_path)), "--out", str(out), "--quiet"]) == 0
    rc = main(["run", str(toy("bon", tmp_path)), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --out: ") and "another recipe or other prompts" in err
    assert main(["run", str(toy("smc", tmp_path)), "--out", str(out), "--quiet", "--set", "prompts.limit=2"]) == 2
    assert main(["run", str(toy("bon", tmp_path)), "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert load_recipe(out / "recipe.toml").kernel_name == "best_of_n"
    assert len(list(out.glob("prompt-*"))) == 8  # nothing left from the other run
    # the same recipe again: nothing to do, the same directory
    before = (out / "particles.jsonl").read_text()
    assert main(["run", str(toy("bon", tmp_path)), "--out", str(out), "--quiet"]) == 0
    assert (out / "particles.jsonl").read_text() == before


def test_out_pointing_at_a_file_is_one_line(tmp_path, capsys) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["run", str(toy("smc", tmp_path)), "--out", str(f)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out: {f} is a file, not a results directory"


# ---------------------------------------------------------------------- allocation
def _allocated_recipe(tmp_path: Path) -> Path:
    items = ", ".join(f'{{ prompt = "{p}", answer = "{a}" }}' for p, a in
                      [("b", "bc"), ("cab", "cabb"), ("a", "ab"), ("bc", "bcc"), ("ca", "cab"), ("cc", "ccb"),
                       ("ab", "abb"), ("bb", "bbc")] * 2)
    text = toy("smc", tmp_path).read_text().replace(f"items = {PROMPTS}", f"items = [{items}]")
    text = text.replace("repeats = 2\n", "plots = 0\n").replace('variables = ["answer", "prefix_score"]',
                                                                'variables = ["answer"]')
    text = text.replace("args = { max_tokens = 5", "args = { max_tokens = 2")
    text += '\n[allocation]\nname = "beta_thompson"\nrounds = 8\nper_round = 4\ngroup_size = 8\nrho_fast = 0.9\n'
    path = tmp_path / "alloc.toml"
    path.write_text(text)
    return path


def _allocation_log(out: Path) -> list:
    return [json.loads(line) for line in (out / "allocation.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_an_allocated_run_killed_and_resumed_makes_the_same_decisions(tmp_path) -> None:
    recipe = _allocated_recipe(tmp_path)
    clean = tmp_path / "clean"
    assert _cli(recipe, clean).wait(timeout=600) == 0
    log = _allocation_log(clean)
    assert len(log) == 8 and all(len(r["picked"]) == 4 for r in log)
    assert len({tuple(r["picked"]) for r in log}) > 1  # the allocator moves between prompts
    out = tmp_path / "killed"
    kills = 0
    for target in (3, 13, 22):
        proc = _cli(recipe, out)
        while _lines(out) < target and proc.poll() is None:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=120)
            kills += 1
    assert kills >= 2
    assert _cli(recipe, out).wait(timeout=600) == 0
    assert _allocation_log(out) == log  # same picks, same posteriors, round by round
    _assert_same(_comparable(out), _comparable(clean))


def test_allocation_needs_rewards(tmp_path, capsys) -> None:
    text = _allocated_recipe(tmp_path).read_text().replace('answer = "', 'note = "')
    path = tmp_path / "no_answers.toml"
    path.write_text(text)
    assert main(["run", str(path), "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: allocation: allocation needs rewards")
