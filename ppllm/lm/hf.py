"""The `hf` backend: any local transformers causal LM (safetensors dir or GGUF file).

A round of next-token questions becomes ONE batched forward pass, and an already-encoded
prefix is never encoded again: every token's key/value vectors live in a token trie over a
pool of KV slots (`kv_cache.KVStore`). Rows that extend last round's rows run on its buffers
(`resident.ResidentBatch`); others gather their longest cached prefix from the pool. Only
new suffix tokens run (per-row positions, a 4-D mask when rows differ in length), on ppllm's
own GPT-2/Llama forward where it applies (`native_forward`), else on transformers'. Memory is
bounded by evicting least-recently-used leaves (`kv_budget_tokens`). Answers are deterministic
per context (up to float rounding of batched matmuls, ~1e-6); token draws run where the logits
are, each at its particle's own uniform, and only (token, log q, log p) come back.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import LM, ChunkDraw, Context, DrawChunk, SampleToken, TokenDraw, check_token_ids
from .context import ContextKey, key_of
from .hf_support import fast_decoder, kv_shape, quiet_transformers, stop_ids_of, tf_version
from .kv_cache import (
    KVStore,
    TrieNode,
    batch_mask,
    buffer_layer_class,
    copy_back,
    make_buffer_cache,
)
from .native_forward import NativeDecoder
from .resident import ResidentBatch
from .token_draws import DeviceMasks, draw_tokens

__all__ = ["HFLM", "DEFAULT_KV_BUDGET_TOKENS", "DEFAULT_KV_BUDGET_BYTES"]

# A forward's row: (tokens, keep_from, deepest cached node, what the trie indexes the row by)
Plan = tuple[tuple[int, ...], int, "TrieNode", Any]

DEFAULT_KV_BUDGET_TOKENS = 32_768
# Small models get more tokens by default: as many as this many bytes of K/V hold.
DEFAULT_KV_BUDGET_BYTES = 512 << 20


class HFLM(LM):
    """A transformers causal LM behind ppllm's LM interface, with prefix KV reuse.

    >>> lm = HFLM.load("path/to/model_dir")               # doctest: +SKIP
    >>> lm.logprobs([lm.context("Q: 12+34=\\n").tokens])  # doctest: +SKIP
    """

    fused_chunks = True  # a seeded chunk's token loop runs here (`DrawChunk`): one round per chunk

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str = "hf",
        kv_budget_tokens: int | None = None,
        stop_token_ids: Sequence[int] = (),
        answer_cache_bytes: int = 64 << 20,
        max_batch_positions: int = 32_768,
        native_forward: bool = True,
    ) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        config = model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.device = next(model.parameters()).device
        self._on_cpu = self.device.type == "cpu"
        self.dtype = next(model.parameters()).dtype
        self.max_positions = int(
            getattr(text_config, "max_position_embeddings", None)
            or getattr(text_config, "n_positions", None)
            or 1 << 30
        )
        self.eos_token_id = tokenizer.eos_token_id
        if self.eos_token_id is None:
            eos = getattr(config, "eos_token_id", None)
            self.eos_token_id = eos[0] if isinstance(eos, list | tuple) else eos
        self.stop_token_ids = stop_ids_of(model, tokenizer, self.eos_token_id, self.vocab_size, stop_token_ids)
        self.eos_token_ids = frozenset(self.stop_token_ids)
        self.max_batch_positions = int(max_batch_positions)
        forward = inspect.signature(model.forward).parameters
        # transformers 5 renamed `past_key_values` to `cache`; take whichever forward has.
        self._cache_kwarg = "cache" if "cache" in forward else "past_key_values"
        self._has_logits_to_keep = "logits_to_keep" in forward
        # GPT-2 and Llama-family models run on ppllm's own forward (checked against the
        # model's at load; anything else, or a mismatch, keeps transformers' forward).
        self._native = NativeDecoder.for_model(model) if native_forward else None
        n_layers, kv_heads, head_dim = kv_shape(text_config)
        if kv_budget_tokens is None:  # 32 768 tokens, or 512 MiB of them when that is more
            per_token = 2 * n_layers * kv_heads * head_dim * torch.finfo(self.dtype).bits // 8
            kv_budget_tokens = max(DEFAULT_KV_BUDGET_TOKENS, DEFAULT_KV_BUDGET_BYTES // per_token)
        self._kv = KVStore(n_layers, kv_heads, head_dim, self.dtype, self.device, kv_budget_tokens)
        self._answers: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()  # float64 rows
        self._masks = DeviceMasks(self.device)
        self._resident: ResidentBatch | None = None  # last round's batch buffers
        self._answer_budget = max(1, answer_cache_bytes // (8 * self.vocab_size))
        self._vocab_strings: list[str] | None = None
        self._decode_ids = fast_decoder(tokenizer, min(self.vocab_size, len(tokenizer)))
        self.stats = {"forwards": 0, "rows": 0, "new_tokens": 0, "reused_tokens": 0, "answer_hits": 0,
                      "bytes_to_host": 0, "gathered": 0, "resident_in_place": 0, "resident_moved": 0,
                      "rows_copied": 0}

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        gguf_file: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        kv_budget_tokens: int | None = None,
        **kwargs: Any,
    ) -> HFLM:
        """Load a transformers causal LM from a safetensors directory or a GGUF file.

        Paths only: `ppllm.zoo.load_lm(name)` builds a backend by name. Never
        touches the model hub (`local_files_only`). Raises FileNotFoundError for a missing
        path and ValueError for something that is not a causal LM.
        """
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        stop_ids: list[int] = list(kwargs.pop("stop_token_ids", ()))
        name = kwargs.pop("name", None)
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"no model at {str(path)!r}: pass a directory with config.json or a .gguf file "
                "(registered models by name: ppllm.zoo.load_lm)"
            )
        name = name or (path.stem if path.is_file() else path.name)
        if path.is_file():
            if path.suffix != ".gguf":
                raise ValueError(f"{path} is a file but not a .gguf model")
            if gguf_file is not None and gguf_file != path.name:
                raise ValueError(f"gguf_file={gguf_file!r} conflicts with the file path {path}")
            path, gguf_file = path.parent, path.name
        if gguf_file is not None:
            if not (path / gguf_file).is_file():
                raise FileNotFoundError(f"no GGUF file {gguf_file!r} in {path}")
        elif not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a transformers model directory")
        opts: dict[str, Any] = {"local_files_only": True}
        if gguf_file is not None:
            opts["gguf_file"] = gguf_file
        try:
            config = AutoConfig.from_pretrained(path, **opts)
        except (ValueError, KeyError, OSError) as err:
            raise ValueError(f"cannot read a model config from {path}: {err}") from err
        heads = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
        if heads and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in heads):
            raise ValueError(
                f"{path} holds a {heads[0]}, which is not a causal LM: its weights would load "
                "into a language-model head they were not trained for"
            )
        if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
            raise ValueError(
                f"{path} holds a {config.model_type!r} model, which is not a causal LM "
                "(transformers has no AutoModelForCausalLM class for it)"
            )
        # `torch_dtype` became `dtype` in transformers 4.56.
        dtype_kw = "dtype" if tf_version() >= (4, 56) else "torch_dtype"
        with quiet_transformers():
            try:
                model = AutoModelForCausalLM.from_pretrained(path, **opts, **{dtype_kw: dtype})
            except OSError as err:
                raise FileNotFoundError(f"cannot load the weights of {path}: {err}") from err
            model.to(device)
            tokenizer = AutoTokenizer.from_pretrained(path, **opts)
        return cls(model, tokenizer, name=name, kv_budget_tokens=kv_budget_tokens, stop_token_ids=stop_ids, **kwargs)

    # ------------------------------------------------------------------ tokenizer
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS added); raises ValueError if the tokenizer loses text."""
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        back = self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        if back != text:
            bad = [ch for ch in dict.fromkeys(text) if self.tokenizer.decode(
                self.tokenizer.encode(ch, add_special_tokens=False), clean_up_tokenization_spaces=False) != ch]
            what = f"the characters {bad[:10]!r}" if bad else "this text (the round trip changes it)"
            raise ValueError(
                f"the tokenizer of {self.name} cannot encode {what}: encoding {text[:60]!r} "
                f"and decoding it back gives {back[:60]!r}"
            )
        return ids

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of `tokens`; stop tokens (EOS, end of turn) are left out."""
        check_token_ids(list(tokens), self.vocab_size, self.name)
        stops = self.eos_token_ids
        return self._decode_ids([int(t) for t in tokens if int(t) not in stops])

    def vocab_strings(self) -> list[str]:
        """The text of every token id alone (for masks such as "tokens without an e")."""
        if self._vocab_strings is None:
            ids = [[i] for i in range(self.vocab_size)]
            strings = self.tokenizer.batch_decode(ids, clean_up_tokenization_spaces=False)
            self._vocab_strings = ["" if i in self.eos_token_ids else s for i, s in enumerate(strings)]
        return self._vocab_strings

    def chat(self, prompt: str, system: str | None = None) -> str:
        """`prompt` as a user turn in the model's chat template, ready for the assistant's reply."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{self.name} has no chat template; pass plain text to lm.context()")
        messages = ([{"role": "system", "content": system}] if system is not None else [])
        messages.append({"role": "user", "content": prompt})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def context(self, prompt: str | Sequence[int] = "") -> Context:
        ctx = super().context(prompt)
        if len(ctx) >= self.max_positions:
            raise ValueError(f"prompt has {len(ctx)} tokens; {self.name} takes at most {self.max_positions}")
        return ctx

    # ------------------------------------------------------------------ cache control
    def clear_cache(self) -> None:
        """Forget every cached prefix and answer (results do not depend on it)."""
        self._kv.clear()
        self._answers.clear()
        self._resident = None

    @property
    def cached_tokens(self) -> int:
        return self._kv.n_cached

    # ------------------------------------------------------------------ backend
    def logprobs(self, contexts: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        """Next-token log-probabilities (float64) after each context: one batched forward."""
        where: dict[tuple[int, ...], int] = {}
        for ctx in contexts:
            where.setdefault(tuple(ctx), len(where))
        rows = self._next_rows(list(where))
        host = rows.cpu().numpy()  # zero-copy on CPU
        self.stats["bytes_to_host"] += host.nbytes
        host.setflags(write=False)
        return [host[where[tuple(ctx)]] for ctx in contexts]

    def sample_tokens(self, requests: Sequence[SampleToken]) -> list[TokenDraw]:
        """Draw each request's token where the logits are (the model's device): temperature,
        mask, top-p and the inverse-CDF draw at the particle's uniform run batched there, and
        only (token, log q, log p) come back to the host."""
        got = self.draw_tokens_at([r.context for r in requests], [r.dist for r in requests],
                                  [r.u for r in requests])
        return [TokenDraw(t, q, p) for t, q, p in zip(*got, strict=True)]

    def draw_tokens_at(self, contexts: Sequence[ContextKey], dists: Sequence[Any],
                       uniforms: Sequence[float]) -> tuple[list[int], list[float], list[float]]:
        """(tokens, log q, log p): one forward row per distinct context (hashed once, at the
        request), the draws batched per kind of distribution."""
        where: dict[ContextKey, int] = {}
        row_of = [where.setdefault(k, len(where)) for k in contexts]
        rows = self._next_rows(list(where), remember=False, normalised=False)
        n = len(contexts)
        d0 = dists[0]
        t0, p0, m0 = d0.temperature, d0.top_p, d0.mask is None
        if all(d is d0 or (d.temperature == t0 and d.top_p == p0 and (d.mask is None) is m0) for d in dists):
            groups = [list(range(n))]  # one kind of distribution (the usual round): one group
        else:
            by: dict[tuple, list[int]] = {}
            for i, d in enumerate(dists):
                by.setdefault((d.temperature, d.top_p, d.mask is None), []).append(i)
            groups = list(by.values())
        if len(groups) == 1:
            tokens, log_q, log_p = self._draw_group(rows, row_of, dists, uniforms, groups[0])
            self.stats["bytes_to_host"] += 3 * 8 * n
            return tokens, log_q, log_p
        out_t, out_q, out_p = [0] * n, [0.0] * n, [0.0] * n
        for members in groups:
            got = self._draw_group(rows, [row_of[i] for i in members], dists, [uniforms[i] for i in members],
                                   members)
            for i, t, q, p in zip(members, *got, strict=True):
                out_t[i], out_q[i], out_p[i] = t, q, p
        self.stats["bytes_to_host"] += 3 * 8 * n
        return out_t, out_q, out_p

    def _draw_group(self, rows: torch.Tensor, index: list[int], dists: Sequence[Any], u: Sequence[float],
                    members: list[int]) -> tuple[list, list, list]:
        """The draws of requests with one kind of distribution; `index`: each one's row."""
        d = dists[members[0]]
        mask = None if d.mask is None else self._masks.of([dists[i].mask for i in members])
        return draw_tokens(rows, np.asarray(u, dtype=np.float64), d.temperature, mask, d.top_p,
                           None if index == list(range(len(rows))) else index)

    def _next_rows(self, contexts: list[tuple[int, ...]] | list[ContextKey], remember: bool = True,
                   normalised: bool = True) -> torch.Tensor:
        """(len(contexts), V) float64 next-token log-probabilities on the model's device;
        distinct contexts expected. Remembered answers are reused, the rest is one forward
        (and remembered when asked: draws consume their rows at once). `normalised=False`
        allows the float32 logits themselves when every row is fresh (a draw normalises)."""
        rows: list[torch.Tensor | None] = [None] * len(contexts)
        todo: list[int] = []
        answers = self._answers
        if not answers:  # e.g. a run of draws, which keep no rows
            todo = list(range(len(contexts)))
        for i, ctx in enumerate(contexts if answers else ()):
            hit = answers.get(ctx)
            if hit is not None:
                answers.move_to_end(ctx)
                self.stats["answer_hits"] += 1
                rows[i] = hit
            else:
                todo.append(i)
        if todo:
            got = [logits[:, -1, :] for logits, _ in self._run_batches([(contexts[i], len(contexts[i]) - 1)
                                                                          for i in todo])]
            fresh = torch.cat(got) if len(got) > 1 else got[0]
            if not normalised and len(todo) == len(contexts):
                return fresh
            # float32 logits, normalised in float64: the weights see exactly normalised values
            fresh = torch.log_softmax(fresh.to(torch.float64), dim=-1)
            if remember:  # clones: a view would keep the whole batch alive
                for j, i in enumerate(todo):
                    self._remember(contexts[i], fresh[j].clone())
            if len(todo) == len(contexts):
                return fresh
            for j, i in enumerate(todo):
                rows[i] = fresh[j]
        return torch.stack(rows)  # type: ignore[arg-type]

    def continuation_logprobs(
        self, pairs: Sequence[tuple[tuple[int, ...], tuple[int, ...]]]
    ) -> list[np.ndarray]:
        """Log-prob vectors at each continuation position: one batched forward for all pairs."""
        out: list[np.ndarray] = [np.zeros((0, self.vocab_size))] * len(pairs)
        rows, where = [], []
        for i, (ctx, cont) in enumerate(pairs):
            if cont:
                rows.append((tuple(ctx) + tuple(cont[:-1]), len(ctx) - 1))
                where.append(i)
        for i, lp in zip(where, self._run(rows) if rows else [], strict=True):
            out[i] = lp
        return out

    def _remember(self, ctx: tuple[int, ...], row: torch.Tensor) -> None:
        self._answers[ctx] = row
        while len(self._answers) > self._answer_budget:
            self._answers.popitem(last=False)

    def _run(self, rows: list[tuple[tuple[int, ...], int]]) -> list[np.ndarray]:
        """For each (tokens, keep_from): log-probs (float64) after tokens[:j+1], j >= keep_from."""
        out: list[np.ndarray] = []
        for logits, need in self._run_batches(rows):
            lp = torch.log_softmax(logits.to(torch.float64), dim=-1).cpu().numpy()
            self.stats["bytes_to_host"] += lp.nbytes
            keep = lp.shape[1]
            out.extend(lp[b, keep - need[b] :] for b in range(len(need)))
        return out

    def _run_batches(self, rows: list[tuple[Any, int]]) -> list[tuple[torch.Tensor, list[int]]]:
        """Forward passes over (tokens or their ContextKey, keep_from) rows, within
        `max_batch_positions` each: per pass, float32 logits (B, keep, V) on the device and
        each row's positions needed."""
        plans = []
        for ids, keep in rows:
            tokens, full = key_of(ids)
            if keep < 0:
                raise ValueError(
                    f"{self.name} needs at least one context token before predicting "
                    "(start the context with a prompt or BOS)"
                )
            if len(tokens) > self.max_positions:
                raise ValueError(f"context of {len(tokens)} tokens exceeds {self.name}'s {self.max_positions} positions")
            plans.append((tokens, keep, self._kv.longest_prefix(tokens, keep, full), full))
        out: list[tuple[torch.Tensor, list[int]]] = []
        batch: list = []
        cost = 0
        # A forward's working K/V (rows x width) stays within half the KV budget, so memory
        # is at most the pool plus half as much again (plus the round's logits).
        limit = min(self.max_batch_positions, self._kv.working)
        for plan in plans:
            tokens = plan[0]
            width = len(tokens)
            if batch and (len(batch) + 1) * max(cost, width) > limit:
                out.append(self._forward(batch))
                batch, cost = [], 0
            batch.append(plan)
            cost = max(cost, width)
        if batch:
            out.append(self._forward(batch))
        self._kv.evict()
        return out

    def draw_chunks(self, requests: Sequence[DrawChunk]) -> list[ChunkDraw]:
        with torch.no_grad():  # once for the chunk's forwards, not per position
            return super().draw_chunks(requests)

    def _forward(self, plans: list[Plan]) -> tuple[torch.Tensor, list[int]]:
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self._forward_no_grad(plans)
        return self._forward_no_grad(plans)

    def _forward_no_grad(self, plans: list[Plan]) -> tuple[torch.Tensor, list[int]]:
        kv = self._kv
        dev = self.device
        B = len(plans)
        S = max(len(tokens) - node.depth for tokens, _, node, _ in plans)
        kfull, vfull, P, order = self._past_buffers(plans, S)
        if order is not None:  # the batch runs in the resident rows' order
            plans = [plans[j] for j in order]
        past = [node.depth for _, _, node, _ in plans]
        need = [len(tokens) - keep for tokens, keep, _, _ in plans]
        cap = kfull.shape[3]
        if S == 1:  # the common round: one new token per row (every suffix is one token)
            suffix = None
            lens = [1] * B
            ragged = any(p != P for p in past)
            last = [tokens[-1] for tokens, _, _, _ in plans]
            if min(last) < 0 or max(last) >= self.vocab_size:
                check_token_ids(last, self.vocab_size, self.name)
            ids_np = np.array(last, dtype=np.int64).reshape(B, 1)
            pos_np = np.array(past, dtype=np.int64).reshape(B, 1)
        else:
            suffix = [tokens[d:] for (tokens, _, _, _), d in zip(plans, past, strict=True)]
            lens = [len(s) for s in suffix]
            ragged = any(p != P for p in past) or any(n != S for n in lens)
            ids_np = np.zeros((B, S), dtype=np.int64)
            pos_np = np.zeros((B, S), dtype=np.int64)
            for b, suf in enumerate(suffix):
                ids_np[b, S - lens[b] :] = suf
                pos_np[b, S - lens[b] :] = np.arange(past[b], past[b] + lens[b])
            if ids_np.size and (ids_np.min() < 0 or ids_np.max() >= self.vocab_size):
                check_token_ids(ids_np, self.vocab_size, self.name)
        input_ids, position_ids = torch.from_numpy(ids_np), torch.from_numpy(pos_np)
        if not self._on_cpu:
            input_ids, position_ids = input_ids.to(dev), position_ids.to(dev)
        mask = None
        if ragged or (S > 1 and P > 0):
            mask = batch_mask(past, lens, P, S, dev)
        keep = max(need)
        resident_ok = self._native is not None or buffer_layer_class() is not None
        if self._native is not None:  # it reads the buffers' first B rows itself
            logits = self._native(input_ids, position_ids, mask, kfull, vfull, P, keep)
        else:
            kbuf, vbuf = (kfull, vfull) if kfull.shape[1] == B else (kfull[:, :B], vfull[:, :B])
            logits = self._model_forward(input_ids, position_ids, mask, kbuf, vbuf, P, keep)
        self.stats["forwards"] += 1
        self.stats["rows"] += B
        self.stats["new_tokens"] += sum(lens)
        self.stats["reused_tokens"] += sum(past)
        # Store the new tokens' KV in the pool: one write for all rows and layers.
        new_pos: list[int] = []
        new_slots: list[int] = []
        lasts: list[TrieNode] = []
        if S == 1 and not ragged:  # one token per row, all at position P
            slots = kv.alloc(B)
            insert_one = kv.insert_one
            for b, ((tokens, _, node, full), slot) in enumerate(zip(plans, slots, strict=True)):
                child = insert_one(node, tokens[-1], slot, full)
                if child is None:
                    kv.free.append(slot)
                    lasts.append(node.children[tokens[-1]])
                else:
                    new_pos.append(b)
                    new_slots.append(slot)
                    lasts.append(child)
        else:
            if suffix is None:
                suffix = [tokens[-1:] for tokens, _, _, _ in plans]
            for b, ((_, _, node, full), suf) in enumerate(zip(plans, suffix, strict=True)):
                slots = kv.alloc(len(suf))
                last, used = kv.insert(node, suf, slots, full)
                taken = set(used)
                kv.free.extend(s for s in slots if s not in taken)
                if used:
                    start = P + S - len(suf)
                    where = {s: start + j for j, s in enumerate(slots)}
                    new_pos.extend(b * cap + where[s] for s in used)
                    new_slots.extend(used)
                kv.touch(last, full)
                lasts.append(last)
        for _, _, node, _ in plans:  # paths are kept on leaves only: O(depth) memory per branch
            if node.children and node.parent is not None:
                node.path = node.buffer = None
        if new_slots and S == 1 and not ragged:
            kv.store_column(kfull, vfull, P, new_pos, new_slots, B)
        elif new_slots:
            kv.store_positions(kfull, vfull, new_pos, new_slots)
        # Keep this batch's buffers for the next round when every row's KV is contiguous in
        # them (all suffixes equally long) and they fit the budget: rows that come back
        # extended are then not gathered again.
        if resident_ok and all(n == S for n in lens) and kfull.shape[1] * cap <= kv.working:
            self._resident = ResidentBatch(kfull, vfull, B, P + S, lasts)
        else:
            self._resident = None
        if order is None:
            return logits, need
        back = [0] * B  # answers in the plans' own order
        for b, j in enumerate(order):
            back[j] = b
        return logits.index_select(0, torch.tensor(back, device=dev)), [need[b] for b in back]

    def _model_forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None,
                       kbuf: torch.Tensor, vbuf: torch.Tensor, P: int, keep: int) -> torch.Tensor:
        """transformers' own forward over the buffers (architectures without a native one)."""
        keys = [kbuf[i] for i in range(kbuf.shape[0])]
        values = [vbuf[i] for i in range(vbuf.shape[0])]
        cache = make_buffer_cache(keys, values, P)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "position_ids": position_ids,
                                  "attention_mask": mask, self._cache_kwarg: cache, "use_cache": True}
        if self._has_logits_to_keep:
            kwargs["logits_to_keep"] = keep
        logits = self.model(**kwargs).logits[:, -keep:, :]
        if buffer_layer_class() is None:
            copy_back(cache, keys, values)
        return logits

    def _past_buffers(
        self, plans: list[Plan], S: int
    ) -> tuple[torch.Tensor, torch.Tensor, int, list[int] | None]:
        """K and V buffers (layers, >= B rows, heads, >= P + S positions, head_dim) whose
        first B rows hold each row's past right-aligned at position P; P; and the batch order
        (`order[b]` = the plan in row b), None when it is the plans' own.

        Rows that extend last round's rows run on its buffers, arranged in place
        (`resident.ResidentBatch.arrange`: only rows that must move are copied). Otherwise
        each row's past is gathered slot by slot from the pool.
        """
        kv = self._kv
        dev = self.device
        n_layers, heads, dim = kv.shape
        res = self._resident
        if res is not None:
            arrangement = res.arrange([node for _, _, node, _ in plans])
            if arrangement is not None and res.fits(arrangement, res.end + S):
                P = res.end
                k, v = res.apply(arrangement)
                if arrangement.copies:
                    self.stats["resident_moved"] += 1
                    self.stats["rows_copied"] += len(arrangement.copies)
                else:
                    self.stats["resident_in_place"] += 1
                return k, v, P, None if arrangement.identity else arrangement.order
        # Gather from the pool (which holds every row's past), letting the old buffers go first:
        # growing never holds two copies of the batch.
        more_rows = res is None or len(plans) > res.rows
        self._resident = res = None
        self.stats["gathered"] += 1
        past = [node.depth for _, _, node, _ in plans]
        P = max(past)
        B, W = len(plans), P + S
        # Room to grow in place, within the budget: positions by half, rows by as many again
        # when the batch has grown (copies of one context split over the first rounds).
        rows_cap = max(B, min(2 * B, kv.working // W)) if more_rows else B
        cap = max(W, min(W + max(32, W // 2), kv.working // rows_cap))
        idx = np.zeros((B, W), dtype=np.int64)
        for b, (_, _, node, _) in enumerate(plans):
            if past[b]:
                idx[b, P - past[b] : P] = kv.path_of(node)
        # Pool rows are (slot, head) pairs, so gathering them in (row, head, position) order
        # yields (B, heads, W, head_dim) rows, the layout attention runs fastest on; one layer
        # at a time, into buffers with room for the next rounds' tokens.
        head = torch.arange(heads, device=dev).view(1, heads, 1)
        rows_t = (torch.from_numpy(idx).to(dev).view(B, 1, W) * heads + head).reshape(-1)
        out = []
        for pool in (kv.k, kv.v):
            buf = torch.empty(n_layers, rows_cap, heads, cap, dim, dtype=pool.dtype, device=dev)
            for layer in range(n_layers):
                buf[layer, :B, :, :W] = pool[layer].view(-1, dim).index_select(0, rows_t).view(B, heads, W, dim)
            out.append(buf)
        return out[0], out[1], P, None

    def __repr__(self) -> str:
        return f"HFLM({self.name!r}, vocab_size={self.vocab_size}, cached_tokens={self.cached_tokens})"
