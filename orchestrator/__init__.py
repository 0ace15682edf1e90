"""orchestrator: what quantization costs an LLM, measured on real inference servers."""

__version__ = "0.1.0"
