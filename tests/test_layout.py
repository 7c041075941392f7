"""The shape of the house: one kernel protocol, one loop, rooms by concern, user programs importable.

- every registered kernel is a module with `init`, `step` and `run`;
- `ppllm/kernels/` holds exactly one `while` loop (the driver's);
- importing ppllm (any module outside tasks/ and testing/) imports no task, test fixture or
  example program, and the backends know no model by name;
- no module is over 600 lines and cli.py holds argparse only (≤ 300 lines);
- the example programs import as `ppllm_models` from any directory.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from ppllm.kernels import KERNELS

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ppllm"


@pytest.mark.parametrize("name", list(KERNELS))
def test_every_kernel_module_has_init_step_run(name: str) -> None:
    module = importlib.import_module(f"ppllm.kernels.{name}")
    for fn in ("init", "step", "run"):
        assert callable(getattr(module, fn, None)), f"ppllm.kernels.{name} has no {fn}()"
    assert KERNELS.get(name) is module.run


def _whiles(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    return [(path.name, node.lineno) for node in ast.walk(tree) if isinstance(node, ast.While)]


def test_there_is_one_loop_in_the_kernels() -> None:
    found = [w for f in sorted((PKG / "kernels").glob("*.py")) for w in _whiles(f)]
    assert len(found) == 1 and found[0][0] == "driver.py", found


def test_modules_are_small_and_the_cli_is_argparse_only() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PKG.rglob("*.py")}
    assert not {k: v for k, v in sizes.items() if v > 600}
    assert sizes["ppllm/cli.py"] <= 300


def test_library_imports_no_task_test_or_example_code() -> None:
    skip = ("ppllm.tasks", "ppllm.testing")
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in PKG.rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for m in {[m for m in modules if not m.startswith(skip)]!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k.startswith(('ppllm.tasks', 'ppllm.testing', 'ppllm_models', 'models')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_backends_know_no_model_by_name(tmp_path, monkeypatch) -> None:
    from ppllm.lm.hf import HFLM

    for backend in (PKG / "lm").glob("*.py"):
        text = backend.read_text()
        assert "tiny-arith" not in text and "smollm2" not in text, backend.name
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="ppllm.zoo.load_lm"):
        HFLM.load("tiny-arith")


def test_example_programs_import_from_any_directory(tmp_path) -> None:
    script = tmp_path / "use_models.py"
    script.write_text(
        "import ppllm\n"
        "from ppllm.lm import ToyLM\n"
        "from ppllm_models.math_reasoning import MathReasoning, arith_prompt\n"
        "from ppllm_models.toy_text import ToyText\n"
        "lm = ToyLM.random(['a', 'b', '<eos>'], seed=0)\n"
        "post = ppllm.smc(ToyText(lm, 'a', max_tokens=3), 4, seed=0)\n"
        "print(post.n, arith_prompt(1, 2), MathReasoning.__name__)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "Q:", "1+2=", "MathReasoning"]
