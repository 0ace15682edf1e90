"""A tiny random Qwen2-architecture model, built offline, for real servers in tests.

- tokenizer: byte-level BPE (~2k tokens) trained with ``tokenizers`` on the local MMLU/C-Eval
  text, Qwen2's pre-tokenizer regex, ChatML special tokens and chat template;
- weights: Qwen2ForCausalLM layout (hidden 256, 4 heads of 64, 2 KV heads, 2 layers; vLLM's CPU
  backend rejects head_dim < 32), random, with the output rows of special tokens zeroed so that
  greedy output is plain text;
- written as HF safetensors (for vLLM) and as GGUF F16 (``gguf`` writer), quantized to Q8_0 and
  Q4_K_M with llama.cpp's own quantize API (for llama.cpp).

Run as ``python tests/support/tiny_model.py OUT_DIR [DATA_DIR]``.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from orchestrator.tokenizer import QWEN2_SPLIT

VERSION = "tiny-qwen2-v1"
HIDDEN = 256
INTERMEDIATE = 512
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
VOCAB_TARGET = 2048
CONTEXT = 32768
ROPE_THETA = 1_000_000.0
RMS_EPS = 1e-6
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _corpus(data_dir: Path) -> list[str]:
    texts: list[str] = []
    for sub, split in (("mmlu", "dev"), ("mmlu", "val"), ("ceval", "dev"), ("ceval", "val")):
        for path in sorted((data_dir / sub / split).glob("*.csv")):
            with open(path, newline="", encoding="utf-8") as f:
                texts += [" ".join(row) for row in csv.reader(f)]
    if not texts:
        raise SystemExit(f"no training text under {data_dir}")
    return texts


def build_tokenizer(data_dir: Path, out: Path) -> dict[str, int]:
    """Train and save tokenizer.json + tokenizer_config.json; returns the vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(data_dir), trainer)
    # Specials after the learned vocabulary, as in Qwen2 (ids after all BPE tokens).
    tok.add_special_tokens(list(SPECIALS))
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab(with_added_tokens=True)
    added = {
        str(vocab[s]): {
            "content": s,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
            "special": True,
        }
        for s in SPECIALS
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": CONTEXT,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    return dict(vocab)


def build_weights(vocab_size: int, special_ids: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """Random Qwen2 weights in HF naming, float32."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    kv = KV_HEADS * HEAD_DIM
    t: dict[str, np.ndarray] = {"model.embed_tokens.weight": w(vocab_size, HIDDEN, std=1.0)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        t[p + "self_attn.q_proj.weight"] = w(HIDDEN, HIDDEN, std=0.1)
        t[p + "self_attn.q_proj.bias"] = w(HIDDEN)
        t[p + "self_attn.k_proj.weight"] = w(kv, HIDDEN, std=0.1)
        t[p + "self_attn.k_proj.bias"] = w(kv)
        t[p + "self_attn.v_proj.weight"] = w(kv, HIDDEN, std=0.1)
        t[p + "self_attn.v_proj.bias"] = w(kv)
        t[p + "self_attn.o_proj.weight"] = w(HIDDEN, HIDDEN, std=0.05)
        t[p + "mlp.gate_proj.weight"] = w(INTERMEDIATE, HIDDEN, std=0.05)
        t[p + "mlp.up_proj.weight"] = w(INTERMEDIATE, HIDDEN, std=0.05)
        t[p + "mlp.down_proj.weight"] = w(HIDDEN, INTERMEDIATE, std=0.05)
    t["model.norm.weight"] = np.ones(HIDDEN, np.float32)
    # A wide logit spread keeps greedy choices far from ties, so batching noise cannot flip them.
    head = w(vocab_size, HIDDEN, std=1.0)
    head[special_ids] = 0.0
    t["lm_head.weight"] = head
    return t


def write_hf(out: Path, tensors: dict[str, np.ndarray], vocab: dict[str, int]) -> None:
    """config.json + model.safetensors (+ generation_config.json)."""
    from safetensors.numpy import save_file

    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": len(vocab),
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": CONTEXT,
        "max_window_layers": LAYERS,
        "rope_theta": ROPE_THETA,
        "rms_norm_eps": RMS_EPS,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "use_cache": True,
        "use_sliding_window": False,
        "sliding_window": None,
        "attention_dropout": 0.0,
        "bos_token_id": vocab["<|endoftext|>"],
        "eos_token_id": vocab["<|im_end|>"],
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    gen = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"], "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2), encoding="utf-8")


def write_gguf(path: Path, tensors: dict[str, np.ndarray], tokenizer_json: Path) -> None:
    """GGUF F16 with the tokenizer and chat template embedded (llama.cpp's qwen2 layout)."""
    import gguf

    tj = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab: dict[str, int] = dict(tj["model"]["vocab"])
    for added in tj["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    specials = set(SPECIALS)
    types = [gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]

    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name("tiny-qwen2")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(INTERMEDIATE)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|endoftext|>"])
    w.add_bos_token_id(vocab["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.v_proj.bias": "attn_v.bias",
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for i in range(LAYERS):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}"] = f"blk.{i}.{gg}"
    for hf, array in tensors.items():
        # 1-D tensors (norms, biases) stay F32, as llama.cpp's converter writes them.
        w.add_tensor(names[hf], array if array.ndim == 1 else array.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src: Path, dst: Path, kind: str) -> None:
    """Quantize with llama.cpp's own code (Q8_0 or Q4_K_M)."""
    import llama_cpp

    ftypes = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[kind]
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({kind}) returned {rc}")


def build(out: Path, data_dir: Path, gguf_quants: bool = True) -> Path:
    """Build everything into ``out`` (skipped when a previous build completed)."""
    marker = out / "COMPLETE"
    if marker.exists() and marker.read_text() == VERSION:
        return out
    out.mkdir(parents=True, exist_ok=True)
    hf = out / "hf"
    hf.mkdir(exist_ok=True)
    vocab = build_tokenizer(data_dir, hf)
    tensors = build_weights(len(vocab), [vocab[s] for s in SPECIALS])
    write_hf(hf, tensors, vocab)
    write_gguf(out / "tiny-qwen2-f16.gguf", tensors, hf / "tokenizer.json")
    if gguf_quants:
        quantize(out / "tiny-qwen2-f16.gguf", out / "tiny-qwen2-q8_0.gguf", "q8_0")
        quantize(out / "tiny-qwen2-f16.gguf", out / "tiny-qwen2-q4_k_m.gguf", "q4_k_m")
    marker.write_text(VERSION)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1])
    data = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parents[3] / "shared" / "data"
    print(build(target, data))
