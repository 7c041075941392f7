"""The `ppllm` command: run recipes, the demo, the model zoo, and reports (docs/recipes.md).

    ppllm run inference/RECIPE.toml [--set key=value ...] [--out DIR] [--quiet] [--json]
    ppllm report DIR
    ppllm demo [...]
    ppllm models list | fetch NAME | train NAME [...]

A user's mistake is reported as one line, `error: <field>: <message>`, on stderr with exit
status 2 — never a traceback (`--debug` shows one).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .recipes import RecipeError

__all__ = ["main"]

# run-time failures that are the environment's, not ppllm's: reported as one line (exit 1)
PROGRAM_ERRORS = {"ProgramError"}  # the user's program raised: their mistake, exit status 2
USER_ERRORS = {"ServedLMError", *PROGRAM_ERRORS}
DEBUG_HINT = " (`ppllm --debug ...` shows the traceback)"


def _json_default(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else str(v)


def cmd_run(args: argparse.Namespace) -> int:
    from .recipes import load_recipe
    from .runs import run_recipe
    from .runs.runner import Interrupted

    recipe = load_recipe(args.recipe, args.set or [])
    out = Path(args.out or recipe.out or Path("results") / Path(args.recipe).stem)
    quiet = args.quiet or args.json
    log = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr))
    ray = None
    if args.ray is not None:
        from .runs.ray_runner import RayOptions, ray_missing

        if ray_missing():
            raise ValueError(f"--ray: {ray_missing()}")
        ray = RayOptions(address=None if args.ray == "local" else args.ray, actors=args.actors,
                         per_call=args.per_call, in_flight=args.in_flight)
    try:
        result = run_recipe(recipe, out, progress=not quiet, log=log, overwrite=args.overwrite, ray=ray)
    except Interrupted as stop:
        print(f"{stop}: ppllm run {args.recipe} --out {out}", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, default=_json_default))
    elif not args.quiet:
        print((out / "summary.md").read_text().split("\nRecipe (as run)")[0].strip())
        print(predictions_table(result.get("prompts", [])))
        kernel = sum(float(b.get("seconds", 0.0)) for row in result.get("prompts", []) for b in row.get("budget", []))
        print(f"time: {result.get('wall_seconds', 0.0):.1f} s wall ({result.get('sampling_seconds', 0.0):.2f} s "
              f"running the prompt-rounds, {result.get('writing_seconds', 0.0):.1f} s writing files and plots); "
              f"{kernel:.2f} s inside the kernels (summed over prompt-rounds that ran together)")
        print(f"results in {out}/ (summary.md, prompt-*/posterior.nc, particles.jsonl)")
    return 0


def predictions_table(rows: list[dict[str, Any]], limit: int = 20) -> str:
    """prompt | prediction | reference | correct, for the first `limit` prompts."""

    def cell(v: Any, width: int) -> str:
        text = "" if v is None else str(v).replace("\n", " ")
        return text if len(text) <= width else text[: width - 1] + "…"

    lines = ["", f"{'prompt':32}  {'prediction':24}  {'reference':12}  correct"]
    for row in rows[:limit]:
        ok = {True: "yes", False: "no"}.get(row.get("correct"), "")
        lines.append(f"{cell(row.get('prompt'), 32):32}  {cell(row.get('prediction'), 24):24}  "
                     f"{cell(row.get('reference'), 12):12}  {ok}")
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more prompts in summary.md")
    return "\n".join(lines) + "\n"


def cmd_report(args: argparse.Namespace) -> int:
    from .runs import write_report

    result = write_report(args.dir, progress=not args.json, max_plots=None if args.plots == "all" else int(args.plots))
    if args.json:
        print(json.dumps(result, default=_json_default))
    else:
        print(f"wrote {Path(args.dir) / 'summary.md'} and plots for {len(result['prompts'])} prompt(s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .runs import demo

    return int(demo.main(args.rest) or 0)


TRAINERS = {"tiny-arith": "ppllm.tasks.arith.train_lm", "arith-prm": "ppllm.tasks.arith.train_prm"}


def cmd_models(args: argparse.Namespace) -> int:
    from . import zoo

    if args.action == "list":
        models = zoo.list_models()
        if args.json:
            print(json.dumps(models, default=str))
        else:
            for m in models:
                where = m.get("path") if m.get("present") else f"missing: {m.get('how_to_get', '')}"
                print(f"{m.get('name', '?'):12s} {m.get('description', '')}\n{'':12s} {where}")
        return 0
    if not args.name:
        raise RecipeError("models", f"`ppllm models {args.action}` needs a model name")
    if args.name not in zoo.MODELS:
        raise RecipeError("models", f"unknown model {args.name!r} (known: {', '.join(zoo.MODELS)})")
    if args.action == "fetch":
        if args.name == "smollm2":
            from .zoo import smollm2

            print(smollm2.fetch())
            return 0
        raise RecipeError("models", f"{args.name} is committed with ppllm; nothing to fetch")
    if args.name not in TRAINERS:
        raise RecipeError("models", f"{args.name} is not trained here; use `ppllm models fetch {args.name}`")
    trainer = importlib.import_module(TRAINERS[args.name])
    rest = ["train", *args.rest] if args.name == "tiny-arith" else list(args.rest)  # its script has train / eval
    return int(trainer.main(rest) or 0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ppllm", description="Probabilistic inference over LM generation.")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.add_argument("--verbose", action="store_true", help="keep third-party libraries' notices and bars")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a recipe (inference/*.toml)")
    r.add_argument("recipe")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field, e.g. kernel.n_particles=4")
    r.add_argument("--out", help="results directory (default: [run] out, else results/RECIPE)")
    r.add_argument("--quiet", action="store_true", help="no progress or summary")
    r.add_argument("--json", action="store_true", help="print one JSON object with the results")
    r.add_argument("--overwrite", action="store_true", help="clear --out first if it holds another run")
    r.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the prompt-rounds on Ray actors: a local cluster, or the one at ADDRESS "
                        "(needs pip install 'ppllm[ray]')")
    r.add_argument("--actors", type=int, default=2, help="Ray actors, each with its own model (default 2)")
    r.add_argument("--per-call", type=int, default=8, help="prompt-rounds an actor runs together (default 8)")
    r.add_argument("--in-flight", type=int, default=2, help="calls each actor holds at once (default 2)")
    r.set_defaults(fn=cmd_run)
    rep = sub.add_parser("report", help="regenerate summary and plots of a results directory")
    rep.add_argument("dir")
    rep.add_argument("--json", action="store_true")
    rep.add_argument("--plots", default="16", help="per-prompt plots for the first N prompts, or 'all' (default 16)")
    rep.set_defaults(fn=cmd_report)
    d = sub.add_parser("demo", help="the demo (see README); other options go to the demo")
    d.set_defaults(fn=cmd_demo, passthrough=True)
    m = sub.add_parser("models", help="embedded models: list | fetch NAME | train NAME")
    m.add_argument("action", choices=["list", "fetch", "train"])
    m.add_argument("name", nargs="?")
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_models, passthrough=True)  # `train NAME ...`: options go to the trainer
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ppllm` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    lead = 0  # global flags before the command
    while lead < len(argv) and argv[lead] in ("--debug", "--verbose"):
        lead += 1
    if "--verbose" in argv[:lead]:
        os.environ["PPLLM_VERBOSE"] = "1"
    # `demo ...` and `models train NAME ...` hand every later option (--help too) to their script
    head = argv[lead:]
    if head[:1] == ["demo"]:
        argv, tail = argv[: len(argv) - len(head) + 1], head[1:]
    elif head[:2] == ["models", "train"] and len(head) > 2:
        argv, tail = argv[: len(argv) - len(head) + 3], head[3:]
    else:
        tail = []
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    rest = rest + tail
    if rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    try:
        return args.fn(args)
    except RecipeError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a served LM that failed, a program that raised
        if args.debug or type(e).__name__ not in USER_ERRORS:
            raise
        print(f"error: {e}{DEBUG_HINT}", file=sys.stderr)
        return 2 if type(e).__name__ in PROGRAM_ERRORS else 1
    except (ValueError, TypeError, OSError) as e:  # a bad value met at run time
        if args.debug:
            raise
        print(f"error: {type(e).__name__}: {e}{DEBUG_HINT}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ppllm ... | head`
        sys.stderr.close()
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
