"""``python -m shoal.sim ...`` is ``shoal simulate ...``."""

import sys

from shoal.sim.cli import main

sys.exit(main())
