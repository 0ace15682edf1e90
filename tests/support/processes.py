"""Child processes of the tests."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """``preexec_fn`` for a child a test sends Ctrl-C to: SIGINT at its default. A suite started in
    the background by a script inherits SIGINT as ignored, and so would the child (Python then
    installs no KeyboardInterrupt handler at all)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
