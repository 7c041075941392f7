"""The served backend against a real llama.cpp server (tier C), and its failure modes.

A real server: llama-cpp-python's OpenAI-compatible server on 127.0.0.1 serving SmolLM2's
GGUF. Particle filtering and best-of-N run through it and in-process (the hf backend on the
same weights); their answer distributions are compared with a two-sample χ² test at a
false-failure rate of 1e-4 (the two backends draw independently, from the same model up to
llama.cpp's arithmetic). Results do not depend on how many requests are in flight. Killing
the server mid-run ends in a one-line error within a bounded time, and no server process
is left behind. A hand-written mock server injects the faults a real one does not make on
request (malformed JSON, HTTP 500, a wrong number of choices).
"""

from __future__ import annotations

import http.server
import json
import math
import re
import threading
import time
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chi2_contingency
from smollm2_fixture import require_smollm2

import ppllm
from ppllm.kernels import best_of_n, particle_filter
from ppllm.lm import ToyLM
from ppllm.lm.served import ServedLM, ServedLMError
from ppllm.testing.servers import free_port, llama_server, stop

pytestmark = [pytest.mark.slow, pytest.mark.smollm2]
QUESTION = "Pick a whole number from 1 to 9. Reply with the digit only."


class Digit(ppllm.Program):
    """One short chunk; odd digits are preferred by a factor 2 (the target of particle filtering)."""

    def __init__(self, lm, prompt: str):
        self.lm, self.ctx = lm, lm.context(prompt)
        self.start = len(self.ctx)

    async def step(self):
        self.ctx = self.ctx + await self.sample(self.lm.chunk(self.ctx, stop="\n", max_tokens=3))
        self.prefix_score = 0.9 if (self.answer or 0) % 2 else 0.45
        self.factor(math.log(self.prefix_score))
        self.finish()

    @property
    def answer(self) -> int | None:
        m = re.search(r"\d", self.lm.decode(self.ctx.tokens[self.start :]))
        return int(m.group()) if m else None


@pytest.fixture(scope="module")
def smol():
    require_smollm2()
    from ppllm import zoo
    from ppllm.zoo import smollm2

    return zoo.load_lm("smollm2"), str(smollm2.gguf_path())


@pytest.fixture(scope="module")
def server(smol):
    with llama_server(smol[1]) as (url, proc):
        yield url, proc


def served(url: str, **kw) -> ServedLM:
    from ppllm import zoo

    return zoo.load_served(url, "smollm2", **kw)


def answers(lm, kernel: str, runs: int) -> list:
    prompt = lm.chat(QUESTION)
    out = []
    for s in range(runs):
        prog = Digit(lm, prompt)
        if kernel == "pf":
            post = particle_filter.run(prog, 4, seed=s, select="sample", answer_fn=lambda p: p.answer)
        else:
            post = best_of_n.run(prog, 4, seed=s, answer_fn=lambda p: p.answer)
        out.append(post.extras["answer"])
    return out


@pytest.mark.parametrize("kernel", ["pf", "bon"])
def test_served_matches_in_process(server, smol, kernel) -> None:
    """40 runs each; χ² two-sample test of the selected answers (rare answers pooled)."""
    a, b = answers(served(server[0]), kernel, 40), answers(smol[0], kernel, 40)
    keys = sorted({str(x) for x in a + b})
    table = np.array([[Counter(map(str, a))[k] for k in keys], [Counter(map(str, b))[k] for k in keys]])
    common = table.sum(0) >= 5
    table = np.column_stack([table[:, common], table[:, ~common].sum(1)]) if (~common).any() else table
    table = table[:, table.sum(0) > 0]
    if table.shape[1] > 1:
        p = chi2_contingency(table)[1]
        assert p > 1e-4, (table, p)


def test_results_do_not_depend_on_requests_in_flight(server) -> None:
    def run(k):
        lm = served(server[0], max_in_flight=k)
        post = best_of_n.run(Digit(lm, lm.chat(QUESTION)), 6, seed=3)
        return [p.ctx.tokens for p in post.particles], lm.stats["max_in_flight"]

    one, eight = run(1), run(8)
    assert one[0] == eight[0] and one[1] == 1 and eight[1] > 1


def test_token_level_programs_fail_at_once_with_the_reason(server) -> None:
    lm = served(server[0])

    class Tokens(ppllm.Program):
        async def step(self):
            await self.sample(lm.next_token(lm.context("Hi")))
            self.finish()

    with pytest.raises(ServedLMError, match="cannot return full next-token distributions"):
        ppllm.smc(Tokens(), 2, seed=0)


def test_a_killed_server_gives_a_clear_error_in_bounded_time(smol) -> None:
    with llama_server(smol[1]) as (url, proc):
        lm = served(url, timeout=5.0, max_retries=1)
        prog = Digit(lm, lm.chat(QUESTION))
        best_of_n.run(prog, 2, seed=0)  # the server works
        stop(proc)
        t0 = time.monotonic()
        with pytest.raises(ServedLMError, match=r"127\.0\.0\.1:\d+/v1/completions: cannot connect"):
            best_of_n.run(prog, 2, seed=1)
        assert time.monotonic() - t0 < 30
    assert proc.poll() is not None  # no orphan


# ---------------------------------------------------------------------- injected faults
class Mock(http.server.BaseHTTPRequestHandler):
    mode = "ok"

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if Mock.mode == "500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "boom"}}')
            return
        body = {"id": "x", "object": "text_completion", "created": 0, "model": "m", "choices": []}
        choice = {"index": 0, "text": "7", "finish_reason": "length",
                  "logprobs": {"tokens": ["7"], "token_logprobs": [-0.5], "top_logprobs": [None], "text_offset": [0]}}
        body["choices"] = [choice, choice] if Mock.mode == "two" else [choice]
        raw = b"{not json" if Mock.mode == "json" else json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.fixture
def mock():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Mock)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("mode,words", [("500", "HTTP 500"), ("json", "not a completion"),
                                        ("two", "expected 1 choice, got 2")])
def test_faults_name_the_endpoint(mock, mode, words) -> None:
    from transformers import AutoTokenizer  # noqa: F401

    Mock.mode = mode
    lm = served(mock, max_retries=0, timeout=5.0)
    with pytest.raises(ServedLMError, match=re.escape(f"{mock}/completions") + ".*" + re.escape(words)):
        best_of_n.run(Digit(lm, "Q"), 1, seed=0)


def test_the_mock_itself_answers_well(mock) -> None:
    Mock.mode = "ok"
    lm = served(mock, max_retries=0)
    post = best_of_n.run(Digit(lm, "Q"), 2, seed=0)
    assert [p.answer for p in post.particles] == [7, 7]


# ---------------------------------------------------------------------- the sampling request in process
@pytest.mark.parametrize("chunk_requests", [False, True])
def test_in_process_chunk_sampling_requests_draw_the_right_chunks(chunk_requests) -> None:
    """The backend-side sampler (`SampleChunk`) draws chunks from the same law as the
    particle-side one: frequencies of 4000 draws against the exact chunk probabilities,
    χ² at a false-failure rate of 1e-4."""
    from scipy.stats import chisquare

    from ppllm.exact import enumerate_paths
    from ppllm.request import answer_now

    lm = ToyLM.random(["a", "b", "\n"], order=2, seed=5, eos=None)
    lm.chunk_requests = chunk_requests
    dist = lm.chunk(lm.context("a"), stop="\n", max_tokens=3)
    exact: dict = {}
    lm.chunk_requests = False
    for q, d in enumerate_paths(lambda rng: answer_now(dist.sample(rng))):
        exact[d.value.tokens] = exact.get(d.value.tokens, 0.0) + q
    lm.chunk_requests = chunk_requests
    draws = Counter(answer_now(dist.sample(ppllm.SeededRng(7).child(i))).value.tokens for i in range(4000))
    keys = sorted(exact)
    p = chisquare([draws[k] for k in keys], [4000 * exact[k] for k in keys])[1]
    assert p > 1e-4 and set(draws) <= set(exact)
