"""`python -m keyagent`: the `keyagent` command."""

import sys

from keyagent.cli import main

sys.exit(main())
