"""llama.cpp, managed: its builds (``build.py``: the GGUF, the binary, the instruction sets a build
needs) and its servers (``servers.py``: llama-server or llama-cpp-python's, started, watched and
stopped through ``orchestrator.supervisor``). Beside the backends, not one of them: the adapter
that speaks to a running llama.cpp server is ``backends/openai.py``'s."""

from __future__ import annotations

from orchestrator.llamacpp.build import (
    BuildInfo,
    LaunchError,
    ServerDied,
    check_build,
    check_server_binary,
    cpu_flags,
    find_llama_server,
    resolve_model,
)
from orchestrator.llamacpp.servers import (
    LlamaCppPythonServer,
    LlamaServer,
    ManagedServer,
    llama_server_options,
    managed_server,
)
from orchestrator.supervisor import describe_exit

__all__ = [
    "BuildInfo",
    "LaunchError",
    "LlamaCppPythonServer",
    "LlamaServer",
    "ManagedServer",
    "ServerDied",
    "check_build",
    "check_server_binary",
    "cpu_flags",
    "describe_exit",
    "find_llama_server",
    "llama_server_options",
    "managed_server",
    "resolve_model",
]
