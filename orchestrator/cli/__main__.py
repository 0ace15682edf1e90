"""`python -m orchestrator.cli`: the `orchestrate` command."""

import sys

from orchestrator.cli import main

sys.exit(main())
