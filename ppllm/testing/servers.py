"""A real OpenAI-compatible server for the served-backend tests and benchmark: llama-cpp-python's
server (`python -m llama_cpp.server`, installed by `make test`) serving a GGUF file (SmolLM2's,
from `ppllm models fetch smollm2`) on 127.0.0.1 and a free port, stopped afterwards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_llama_cpp() -> None:
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as e:  # make test installs it; a bare environment may not have it
        raise RuntimeError(f"llama-cpp-python[server] is not installed ({e}); run `make test` to set it up") from None


@contextmanager
def llama_server(gguf: str, timeout: float = 120.0, n_batch: int = 1) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start the server, wait until it answers, yield (base URL, process); always stop it."""
    require_llama_cpp()
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
           "--logits_all", "true", "--n_ctx", "2048", "--n_threads", "1", "--n_batch", str(n_batch), "--verbose", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    json.loads(r.read())
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("llama_cpp.server did not start in time") from None
                time.sleep(0.3)
        yield url, proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
