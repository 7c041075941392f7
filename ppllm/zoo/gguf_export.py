"""Export a GPT-2 safetensors dir (such as `tiny-arith`) to a GGUF file.

The file follows llama.cpp's `gpt2` conventions, so both transformers
(`from_pretrained(dir, gguf_file=...)`) and llama.cpp-based servers can read it:

- tensor names come from the `gguf` package's own name map, the same table transformers
  uses to map them back, so the two cannot drift apart;
- GPT-2's `Conv1D` weights are stored as (in, out); llama.cpp stores linear weights as
  (out, in), and transformers transposes the four `attn_qkv`/`attn_output`/`ffn_up`/`ffn_down`
  weights back on load, so they are transposed here;
- the embedding is tied to the output projection, which GGUF expresses by omitting
  `output.weight`;
- the tokenizer is a byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with an *empty* merge
  list. `gguf.GGUFWriter` refuses to pack an empty array, so that one key is packed by hand
  (`_EmptyArrayWriter`); without it transformers would try to rebuild merges from scores and
  llama.cpp would refuse the file.

Caveat: transformers' legacy GGUF path has no key for `n_positions` in gpt2 files, so a loaded
model always gets the config default (1024). The exported model must therefore have
`n_positions == 1024`; `export_gguf` checks this rather than write a file that loads wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import load_file

__all__ = ["export_gguf", "gguf_tensor_name"]

# Weights that are (in, out) Conv1D matrices in GPT-2 and (out, in) in GGUF.
_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# The value transformers assumes for gpt2 GGUF files (GPT2Config's default).
_GGUF_GPT2_N_POSITIONS = 1024


class _EmptyArrayWriter(gguf.GGUFWriter):
    """GGUFWriter that can also write an empty typed array (an empty merge list)."""

    def _pack_val(
        self,
        val: Any,
        vtype: gguf.GGUFValueType,
        add_vtype: bool,
        sub_type: gguf.GGUFValueType | None = None,
    ) -> bytes:
        if vtype == gguf.GGUFValueType.ARRAY and len(val) == 0 and sub_type is not None:
            head = self._pack("I", vtype) if add_vtype else b""
            return head + self._pack("I", sub_type) + self._pack("Q", 0)
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def gguf_tensor_name(hf_name: str, n_layer: int) -> str | None:
    """The GGUF name of a GPT2LMHeadModel parameter, or None if GGUF has no slot for it."""
    base, _, suffix = hf_name.rpartition(".")
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, n_layer)
    mapped = name_map.get_name(base)
    return None if mapped is None else f"{mapped}.{suffix}"


def _load_state_dict(model_dir: Path) -> dict[str, np.ndarray]:
    state = load_file(str(model_dir / "model.safetensors"))
    # Checkpoints saved from GPT2Model have no "transformer." prefix.
    if not any(k.startswith("transformer.") for k in state):
        state = {f"transformer.{k}": v for k, v in state.items()}
    return state


def _tensor_for_gguf(hf_name: str, value: np.ndarray, f16: bool) -> np.ndarray:
    out = value.astype(np.float32)
    if hf_name.endswith(_TRANSPOSED):
        out = out.T
    # 1-D tensors (norms, biases) stay float32, as llama.cpp expects.
    if f16 and out.ndim > 1:
        out = out.astype(np.float16)
    return np.ascontiguousarray(out)


def _add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path) -> int:
    """Write the byte-level vocabulary from tokenizer.json; return the vocabulary size."""
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    vocab: dict[str, int] = dict(spec["model"]["vocab"])
    special = {tok["content"]: tok["id"] for tok in spec.get("added_tokens", []) if tok["special"]}
    vocab.update(special)
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError("tokenizer ids must be contiguous from 0")
    merges = spec["model"].get("merges") or []
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    types = [gguf.TokenType.CONTROL if tok in special else gguf.TokenType.NORMAL for tok in tokens]
    config = json.loads((model_dir / "config.json").read_text())
    eos = config.get("eos_token_id")
    bos = config.get("bos_token_id", eos)
    pad = config.get("pad_token_id", eos)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_key_value(
        gguf.Keys.Tokenizer.MERGES, merges, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING
    )
    for add, value in (
        (writer.add_bos_token_id, bos),
        (writer.add_eos_token_id, eos),
        (writer.add_pad_token_id, pad),
    ):
        if value is not None:
            add(int(value))
    writer.add_add_bos_token(False)
    return len(tokens)


def export_gguf(model_dir: str | Path, gguf_path: str | Path, f16: bool = False) -> Path:
    """Write `model_dir` (config.json, model.safetensors, tokenizer.json) as a GGUF file.

    `f16=True` stores matrices in float16; that is lossless for `tiny-arith`, whose weights
    are committed in float16 anyway. Returns the path written.
    """
    model_dir, gguf_path = Path(model_dir), Path(gguf_path)
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "gpt2":
        raise ValueError(f"only gpt2 models can be exported, got {config.get('model_type')!r}")
    n_layer, n_embd = int(config["n_layer"]), int(config["n_embd"])
    n_positions = int(config.get("n_positions", _GGUF_GPT2_N_POSITIONS))
    if n_positions != _GGUF_GPT2_N_POSITIONS:
        raise ValueError(
            f"n_positions={n_positions}: transformers loads gpt2 GGUF files with "
            f"n_positions={_GGUF_GPT2_N_POSITIONS}, so the position table would not fit"
        )
    if config.get("n_inner") not in (None, 4 * n_embd):
        raise ValueError("transformers assumes n_inner = 4 * n_embd for gpt2 GGUF files")
    # Both are GPT-2's tanh-approximated GELU, which is what a gpt2 GGUF implies.
    if config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError("a gpt2 GGUF implies GPT-2's tanh-approximated GELU")

    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    writer = _EmptyArrayWriter(str(gguf_path), arch="gpt2")
    writer.add_name(model_dir.name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(n_positions)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(4 * n_embd)
    writer.add_block_count(n_layer)
    writer.add_head_count(int(config["n_head"]))
    writer.add_layer_norm_eps(float(config.get("layer_norm_epsilon", 1e-5)))
    vocab_size = _add_tokenizer(writer, model_dir)
    if vocab_size != int(config["vocab_size"]):
        raise ValueError(f"tokenizer has {vocab_size} tokens, config says {config['vocab_size']}")

    for hf_name, value in _load_state_dict(model_dir).items():
        if hf_name == "lm_head.weight":
            continue  # tied to token_embd: omitting output.weight says so
        name = gguf_tensor_name(hf_name, n_layer)
        if name is None:
            raise ValueError(f"no GGUF slot for tensor {hf_name!r}")
        writer.add_tensor(name, _tensor_for_gguf(hf_name, value, f16))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf_path
