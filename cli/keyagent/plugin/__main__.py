import sys

from keyagent.plugin.main import main

sys.exit(main())
