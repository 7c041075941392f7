"""The `served` backend: an LM behind an OpenAI-compatible HTTP server (vLLM, SGLang, llama.cpp).

A server samples on its side and returns a few log-probabilities, so a served LM answers
chunk requests, not next-token distributions (`chunk_requests = True`):

- `SampleChunk` → one `/v1/completions` call with the request's own seed (drawn from the
  particle's stream), `max_tokens`, temperature and top-p, and every other sampler of the
  server switched off (top-k, min-p, repetition / presence / frequency penalties, mirostat).
  The reply's per-token log-probabilities give the chunk's weight; ppllm cuts the chunk at
  its stop strings itself, from the returned tokens, so the stop string's tokens are part of
  the chunk and of its weight, exactly as in-process.
- `ScoreTokens` → one `/v1/completions` call with `echo` and prompt log-probabilities
  (`observe`, replay, MH moves on served programs).

When the weight is exact. The importance weight of a served chunk is log p − log q over its
tokens. It is exact when the log-probabilities the server returns are those of the
distribution it sampled from. Servers that return the model's raw log-probabilities
(llama.cpp, and vLLM by default: `logprobs="raw"`) sample from that same distribution only
at temperature 1 with top-p 1 and no other sampler, so ppllm refuses any other setting there;
servers configured to return processed log-probabilities (vLLM `--logprobs-mode
processed_logprobs`: `logprobs="processed"`) allow any temperature and top-p, and the
model's own p of a chunk is then asked for separately when a program needs it. A server that
applies a hidden penalty (a repetition penalty it does not let the request switch off) makes
every weight silently wrong: ppllm sends explicit neutral values for every sampler it knows,
and the test suite checks them against a real llama.cpp server. Masks cannot be served.

Tokens. Contexts are token ids of a local tokenizer (`tokenizer=`, a directory or a zoo
name); prompts go to the server as text, and a chunk's tokens are the local encoding of the
text the server returned (`stats["retokenized"]` counts chunks whose local encoding differs
in length from the server's tokens: there the next prompt is the server's text, as always,
but the chunk's recorded token count is the local one). The recorded log q of a chunk that
ends with the model's end-of-text token excludes that token (servers do not report it).

Transport: the `openai` client (httpx connection pool, bounded timeouts, retries with
exponential backoff), many requests in flight at once (`max_in_flight`). A server that
cannot be reached, times out, answers HTTP 5xx, sends JSON that is not a completion, or the
wrong number of choices raises `ServedLMError` naming the endpoint.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import LM, ChunkSample, SampleChunk

__all__ = ["ServedLM", "ServedLMError"]

# Every sampler a server might apply by default, switched off explicitly (names understood by
# llama.cpp, llama-cpp-python and vLLM; unknown extra fields are ignored by OpenAI-style servers).
NEUTRAL_SAMPLERS = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "repetition_penalty": 1.0,
                    "presence_penalty": 0.0, "frequency_penalty": 0.0, "mirostat_mode": 0}


class ServedLMError(RuntimeError):
    """The server could not give a usable answer; the message names the endpoint and why."""


class ServedLM(LM):
    """An OpenAI-compatible completions endpoint as a ppllm LM (see the module docstring).

    >>> lm = ServedLM("http://127.0.0.1:8000/v1", tokenizer="path/to/tokenizer")  # doctest: +SKIP

    `tokenizer`: a transformers tokenizer or a local directory holding one (by a zoo name:
    `ppllm.zoo.load_served(url, tokenizer=name)`).
    """

    chunk_requests = True

    def __init__(
        self,
        base_url: str,
        tokenizer: Any,
        model: str | None = None,
        *,
        logprobs: str = "raw",
        api_key: str = "none",
        timeout: float = 60.0,
        max_retries: int = 2,
        max_in_flight: int = 16,
        name: str | None = None,
        eos_token_ids: Sequence[int] | None = None,
    ) -> None:
        if logprobs not in ("raw", "processed"):
            raise ValueError(f"logprobs must be 'raw' or 'processed', got {logprobs!r}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.base_url = base_url.rstrip("/")
        self.model = model or "default"
        self.logprobs_mode = logprobs
        self.tokenizer = _load_tokenizer(tokenizer)
        self.name = name or f"served:{self.base_url}"
        self.vocab_size = len(self.tokenizer)
        self.eos_token_id = self.tokenizer.eos_token_id
        ids = set(eos_token_ids or ())
        if self.eos_token_id is not None:
            ids.add(int(self.eos_token_id))
        self.eos_token_ids = frozenset(ids)
        self.max_in_flight = int(max_in_flight)
        self._options = {"api_key": api_key, "timeout": timeout, "max_retries": max_retries}
        self._io: tuple[asyncio.AbstractEventLoop, Any] | None = None  # its event loop and client
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "completion_tokens": 0, "retokenized": 0, "max_in_flight": 0}

    # ------------------------------------------------------------------ tokenizer
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of `tokens`, end-of-text tokens left out (special tokens such as chat markers kept)."""
        return self.tokenizer.decode([int(t) for t in tokens if int(t) not in self.eos_token_ids],
                                     clean_up_tokenization_spaces=False)

    def chat(self, prompt: str, system: str | None = None) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{self.name}'s tokenizer has no chat template; pass plain text to lm.context()")
        messages = ([{"role": "system", "content": system}] if system is not None else [])
        messages.append({"role": "user", "content": prompt})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    # ------------------------------------------------------------------ what a server cannot do
    def logprobs(self, contexts: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        raise ServedLMError(
            f"{self.name} cannot return full next-token distributions: a served LM answers chunk "
            "requests only. Use a chunk-level program (lm.chunk(...)) or the in-process hf backend "
            "for token-level SMC"
        )

    def continuation_logprobs(self, pairs):  # type: ignore[override]
        raise ServedLMError(
            f"{self.name} cannot return full distributions over the vocabulary (a tempered, masked or "
            "truncated chunk was scored); score chunks under the model itself, or use the hf backend"
        )

    # ------------------------------------------------------------------ requests
    def sample_chunks(self, requests: Sequence[SampleChunk]) -> list[ChunkSample]:
        for r in requests:
            self._check_servable(r)
        return self._run([self._sample(r) for r in requests])

    def score_tokens(self, pairs: Sequence[tuple[tuple[int, ...], tuple[int, ...]]]) -> list[np.ndarray]:
        return self._run([self._score(ctx, cont) for ctx, cont in pairs])

    def _check_servable(self, r: SampleChunk) -> None:
        d = r.dist
        if d.mask is not None:
            raise ServedLMError(f"{self.name} cannot sample with a token mask (servers do not take one)")
        plain = d.temperature == 1.0 and d.top_p in (None, 1.0)
        if self.logprobs_mode == "raw" and not plain:
            raise ServedLMError(
                f"{self.name} returns raw model log-probabilities, so only temperature 1 and top-p 1 "
                f"give exact weights (asked: temperature {d.temperature}, top-p {d.top_p}); configure the "
                "server to return processed log-probabilities and pass logprobs='processed'"
            )

    # ------------------------------------------------------------------ HTTP
    def _start(self) -> tuple[asyncio.AbstractEventLoop, Any]:
        """One event loop in a background thread, and one client with its connection pool."""
        with self._lock:
            if self._io is None:
                from openai import AsyncOpenAI

                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name=f"ppllm-{self.name}", daemon=True).start()

                async def make() -> Any:
                    return AsyncOpenAI(base_url=self.base_url, **self._options)

                client = asyncio.run_coroutine_threadsafe(make(), loop).result()
                self._io = (loop, client)
            return self._io

    def _client(self) -> Any:
        return self._start()[1]

    def _run(self, coros: list[Any]) -> list[Any]:
        """Run the round's calls concurrently, at most `max_in_flight` at a time."""
        sem = asyncio.Semaphore(self.max_in_flight)
        in_flight = [0]

        async def bounded(c: Any) -> Any:
            async with sem:
                in_flight[0] += 1
                self.stats["max_in_flight"] = max(self.stats["max_in_flight"], in_flight[0])
                try:
                    return await c
                finally:
                    in_flight[0] -= 1

        async def gather() -> list[Any]:
            return list(await asyncio.gather(*(bounded(c) for c in coros)))

        loop, _ = self._start()
        return asyncio.run_coroutine_threadsafe(gather(), loop).result()

    async def _complete(self, extra: dict[str, Any], **body: Any) -> Any:
        import openai

        where = f"{self.base_url}/completions"
        try:
            reply = await self._client().completions.create(model=self.model, **body, extra_body=extra)
        except openai.APITimeoutError:
            raise ServedLMError(f"{where}: timed out after {self._options['timeout']} s") from None
        except openai.APIConnectionError as e:
            raise ServedLMError(f"{where}: cannot connect ({e.__cause__ or e})") from None
        except openai.APIStatusError as e:
            raise ServedLMError(f"{where}: HTTP {e.status_code}: {_short(e.message)}") from None
        except (openai.APIResponseValidationError, ValueError) as e:
            raise ServedLMError(f"{where}: the reply is not a completion ({_short(str(e))})") from None
        self.stats["requests"] += 1
        choices = getattr(reply, "choices", None)
        if not isinstance(choices, list) or len(choices) != 1:
            n = len(choices) if isinstance(choices, list) else "no"
            raise ServedLMError(f"{where}: expected 1 choice, got {n}")
        return choices[0]

    async def _sample(self, r: SampleChunk) -> ChunkSample:
        d = r.dist
        prompt = self.decode(r.tokens)
        choice = await self._complete(
            prompt=prompt, max_tokens=d.max_tokens, temperature=d.temperature,
            top_p=1.0 if d.top_p is None else d.top_p, logprobs=1, seed=r.seed,
            extra={**NEUTRAL_SAMPLERS},
        )
        pieces, lps = _token_logprobs(choice, f"{self.base_url}/completions")
        text, log_q, n = "", 0.0, 0
        for piece, lp in zip(pieces, lps, strict=True):  # cut at the first stop, as in-process
            text += piece
            log_q += lp
            n += 1
            if d.stop and any(s in text for s in d.stop):
                break
        tokens = tuple(self.encode(text))
        if getattr(choice, "finish_reason", None) == "stop" and n == len(pieces) and not (
            d.stop and any(s in text for s in d.stop)
        ) and self.eos_token_id is not None:
            tokens += (int(self.eos_token_id),)  # the model ended the text
        if not tokens:
            tokens = (int(self.eos_token_id),) if self.eos_token_id is not None else ()
        if len(self.encode(text)) != n:
            self.stats["retokenized"] += 1
        self.stats["completion_tokens"] += n
        log_p = log_q if (self.logprobs_mode == "raw" or d.is_plain) else None
        return ChunkSample(tokens, text, float(log_q), None if log_p is None else float(log_p))

    async def _score(self, ctx: tuple[int, ...], cont: tuple[int, ...]) -> np.ndarray:
        prompt, full = self.decode(ctx), self.decode(ctx + cont)
        choice = await self._complete(prompt=full, max_tokens=1, temperature=1.0, echo=True, logprobs=0,
                                      extra={**NEUTRAL_SAMPLERS})
        pieces, lps = _token_logprobs(choice, f"{self.base_url}/completions", allow_none=True)
        # the echoed prompt's pieces come first: take those after the context's text
        out, text = [], ""
        for piece, lp in zip(pieces, lps, strict=True):
            if len(text) >= len(prompt):
                out.append(lp)
            text += piece
            if len(text) >= len(full):
                break
        want = len([t for t in cont if t not in self.eos_token_ids])
        if len(out) != want:
            raise ServedLMError(
                f"{self.base_url}/completions: the server tokenized the scored text into {len(out)} tokens, "
                f"not the {want} of the local tokenizer; scores would not line up"
            )
        return np.array([-math.inf if v is None else v for v in out], dtype=np.float64)

    def __repr__(self) -> str:
        return f"ServedLM({self.base_url!r}, model={self.model!r}, logprobs={self.logprobs_mode!r})"

    def __deepcopy__(self, memo: dict) -> ServedLM:
        return self


def _token_logprobs(choice: Any, where: str, allow_none: bool = False) -> tuple[list[str], list[float]]:
    lp = getattr(choice, "logprobs", None)
    tokens = getattr(lp, "tokens", None)
    values = getattr(lp, "token_logprobs", None)
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        raise ServedLMError(f"{where}: the reply has no per-token log-probabilities (does the server "
                            "return `logprobs`? llama.cpp servers need logits_all)")
    if not allow_none and any(v is None for v in values):
        raise ServedLMError(f"{where}: the reply's log-probabilities contain nulls")
    return [str(t) for t in tokens], values


def _load_tokenizer(tokenizer: Any) -> Any:
    if not isinstance(tokenizer, str | Path):
        return tokenizer
    from transformers import AutoTokenizer

    path = Path(tokenizer).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"no tokenizer directory at {str(path)!r} (by a zoo name: ppllm.zoo.load_served)")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _short(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."
