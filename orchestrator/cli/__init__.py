"""orchestrate: measure what quantization costs an LLM on real inference servers.

Commands: bench, load, report, gate, score, compose, k8s, validate (``orchestrate COMMAND --help``).

Exit codes: 0 done; 2 bad input or environment (manifest, data, models, no Hub); 3 a target failed
or passed the error threshold; 4 the run directory cannot be written (full disk, read-only); 5 the
regression gate failed (`gate`, `bench --gate`); 130 interrupted (Ctrl-C / SIGTERM; everything
already answered is on disk).
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, error
from orchestrator.errors import UserError

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_INTERRUPTED", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input is one line on stderr and exit code 2, never a traceback."""
    from orchestrator.cli.parser import build_parser
    from orchestrator.logs import route_logs

    route_logs()  # third-party log lines never reach the terminal (a run's go to its log)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as exc:
        error(str(exc))
        return exc.exit_code
    except ImportError as exc:  # an optional module not installed where the command needs it
        error(f"a module is missing: {exc} (install the package that provides it)")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
