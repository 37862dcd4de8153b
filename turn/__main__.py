"""``python -m turn``: the TURN process the main server starts and stops (see turn/process.py)."""

import sys

from turn.process import main

sys.exit(main())
