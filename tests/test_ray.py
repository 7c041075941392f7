"""Data-set runs on a local Ray cluster (127.0.0.1): the same record as the single-process
runner, an actor killed mid-run, a driver interrupted and resumed, and no process left behind."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from ppllm.cli import main
from ppllm.recipes import load_recipe
from ppllm.runs import run_recipe
from ppllm.runs.runner import Interrupted

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'ppllm[ray]' (make test installs it)")

from ppllm.runs.ray_runner import RayOptions  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "inference" / "toy_smc.toml"
PROMPTS = 'prompts.items=["a", "b", "c", "ab", "ba", "cc"]'


def recipe(*more: str):
    return load_recipe(TOY, [PROMPTS, "run.repeats=2", "kernel.n_particles=8", *more])


def record(out: Path) -> list[dict]:
    """The record without its timings."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (out / "record.jsonl").open()]


def ray_processes() -> list[str]:
    """Command lines of Ray's processes on this machine (read from /proc: no fork from a process
    that has threads)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if any(k in cmd for k in ("raylet", "gcs_server", "ray::")):
            found.append(cmd.strip())
    return found


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module; shut down at the end, and nothing of it left running."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024 * 1024,
             _node_ip_address="127.0.0.1", logging_level="ERROR")
    yield
    ray.shutdown()
    deadline = time.time() + 20
    while ray_processes() and time.time() < deadline:
        time.sleep(0.5)
    assert ray_processes() == [], ray_processes()


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("single") / "out"
    run_recipe(recipe(), out, progress=False)
    return record(out)


def test_two_actors_write_the_single_process_record(cluster, single, tmp_path) -> None:
    out = tmp_path / "out"
    result = run_recipe(recipe(), out, progress=False, ray=RayOptions(actors=2, per_call=2))
    assert record(out) == single and len(single) == 12
    assert result["ray"]["actors"] == 2 and result["ray"]["retried_calls"] == 0
    local = tmp_path / "local"
    run_recipe(recipe(), local, progress=False)
    assert (out / "particles.jsonl").read_text() == (local / "particles.jsonl").read_text()


def test_an_actor_killed_mid_run_loses_nothing(cluster, single, tmp_path) -> None:
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_first_actor_after_two_commits(pids: list[int]) -> None:
        def watch() -> None:
            while not (out / "record.jsonl").is_file() or len((out / "record.jsonl").read_text().splitlines()) < 2:
                time.sleep(0.02)
            os.kill(pids[0], signal.SIGKILL)  # a real kill of the actor's process
            killed.append(pids[0])

        threading.Thread(target=watch, daemon=True).start()

    # a slow toy LM (0.05 s per batched call) keeps the run going while the kill lands
    opts = RayOptions(actors=2, per_call=1, in_flight=1, on_start=kill_first_actor_after_two_commits)
    result = run_recipe(recipe("model.latency=0.05"), out, progress=False, ray=opts)
    assert killed, "the actor was not killed before the run ended"
    rows = record(out)
    keys = [(r["prompt"], r["round"]) for r in rows]
    assert len(keys) == len(set(keys)) == 12  # every prompt-round exactly once
    assert rows == single  # the latency changes no answer
    assert result["ray"]["retried_calls"] >= 1 and result["ray"]["replacements"] >= 1
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)


def test_an_interrupted_driver_resumes_from_the_record(cluster, single, tmp_path) -> None:
    out = tmp_path / "out"

    def interrupt_after_three(pids: list[int]) -> None:
        main_thread = threading.main_thread().ident

        def watch() -> None:
            while not (out / "record.jsonl").is_file() or len((out / "record.jsonl").read_text().splitlines()) < 3:
                time.sleep(0.02)
            signal.pthread_kill(main_thread, signal.SIGINT)  # Ctrl-C in the driver

        threading.Thread(target=watch, daemon=True).start()

    slow = recipe("model.latency=0.05")
    with pytest.raises(Interrupted):
        run_recipe(slow, out, progress=False, ray=RayOptions(actors=2, per_call=1, in_flight=1,
                                                             on_start=interrupt_after_three))
    partial = record(out)
    assert 3 <= len(partial) < 12
    run_recipe(slow, out, progress=False, ray=RayOptions(actors=2, per_call=2))
    assert record(out) == single


def test_cli_ray_flag(cluster, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(["run", str(TOY), "--set", PROMPTS, "--set", "run.repeats=2", "--set", "kernel.n_particles=8",
               "--out", str(out), "--ray", "--actors", "2", "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["ray"]["actors"] == 2
    assert len(record(out)) == 12


def test_cli_without_ray_says_how_to_install(monkeypatch, tmp_path, capsys) -> None:
    import ppllm.runs.ray_runner as rr

    monkeypatch.setattr(rr, "ray_missing", lambda: rr.INSTALL_HINT)
    rc = main(["run", str(TOY), "--out", str(tmp_path / "o"), "--ray"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'ppllm[ray]'" in err and "Traceback" not in err


def test_allocated_rounds_are_decided_here_and_match_the_runner(cluster, tmp_path) -> None:
    arith = load_recipe(ROOT / "inference" / "arith_allocation.toml",
                        ["prompts.limit=8", "allocation.rounds=2", "allocation.per_round=4", "kernel.budget=4"])
    local, remote = tmp_path / "local", tmp_path / "ray"
    run_recipe(arith, local, progress=False)
    run_recipe(arith, remote, progress=False, ray=RayOptions(actors=2, per_call=2))
    assert record(remote) == record(local) and len(record(local)) == 8
    assert (remote / "allocation.jsonl").read_text() == (local / "allocation.jsonl").read_text()


def test_a_mistake_found_on_an_actor_is_the_same_one_line_error(cluster, tmp_path) -> None:
    from ppllm.recipes import RecipeError

    bad = load_recipe(TOY, ['prompts.items=["a", "zz"]'])  # "z" is not in the toy vocabulary
    with pytest.raises(RecipeError, match="prompt 1: text 'zz' has a character not in the toy vocabulary"):
        run_recipe(bad, tmp_path / "out", progress=False, ray=RayOptions(actors=1))
    assert not (tmp_path / "out" / "record.jsonl").exists() or not (tmp_path / "out" / "record.jsonl").read_text()


def test_nothing_to_do_starts_no_actors(cluster, tmp_path) -> None:
    out = tmp_path / "out"
    run_recipe(recipe(), out, progress=False)
    started: list[list[int]] = []
    result = run_recipe(recipe(), out, progress=False, ray=RayOptions(actors=2, on_start=started.append))
    assert started == [] and "ray" not in result and len(record(out)) == 12
