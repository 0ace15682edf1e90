"""Third-party log lines never reach the terminal: they go to the run's log, or nowhere.

Libraries log through the standard ``logging`` root (langdetect's "Unable to detect language"
during IFEval scoring, the Hub's retries). With no handler on the root, ``logging.error()`` calls
``basicConfig()`` and prints ``ERROR:root:...`` on stderr, between the progress bars. Every
process of a run (the CLI, the scoring child) routes the root logger here first.
"""

from __future__ import annotations

import logging
from pathlib import Path

LOG_NAME = "orchestrator.log"  # in the run directory
_MARK = "_orchestrator_route"


def route_logs(path: Path | None = None) -> None:
    """Give the root logger one handler of ours: a file (the run's log, opened when first
    written) or a null handler; a later call with a file replaces a null one. Handlers others
    installed (a test's capture) are left alone."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _MARK, False)]:
        if path is None:
            return  # routed already
        root.removeHandler(handler)
        handler.close()
    new: logging.Handler
    if path is None:
        new = logging.NullHandler()
    else:
        new = logging.FileHandler(path, encoding="utf-8", delay=True)
        new.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
    setattr(new, _MARK, True)
    root.addHandler(new)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
