"""The model's own tokenizer (Hugging Face ``tokenizers``), from a file, a folder or the Hub.

Used to count tokens when a server reports none, to cross-check servers' counts, and to build
synthetic prompts of exact lengths. Never another model's tokenizer: the manifest names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The pre-tokenizer split of Qwen2 (byte-level BPE), for folders that ship vocab.json + merges.txt
# without tokenizer.json (transformers rebuilds the same from them).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _from_vocab_merges(folder: Path) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        added = sorted((config.get("added_tokens_decoder") or {}).items(), key=lambda kv: int(kv[0]))
        tok.add_special_tokens([AddedToken(v["content"], special=True, normalized=False) for _, v in added])
    return tok


def load_tokenizer(spec: str, resolved: Path | None = None) -> Any:
    """A ``tokenizers.Tokenizer`` from tokenizer.json, a folder (tokenizer.json or vocab+merges) or a Hub id."""
    from tokenizers import Tokenizer

    path = resolved if resolved is not None else Path(spec)
    if path.is_file():
        return Tokenizer.from_file(str(path))
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(path / "tokenizer.json"))
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return _from_vocab_merges(path)
        raise FileNotFoundError(f"{path}: no tokenizer.json, nor vocab.json + merges.txt")
    from orchestrator.hub import fetch

    return fetch(f"the tokenizer of {spec}", lambda: Tokenizer.from_pretrained(spec))
