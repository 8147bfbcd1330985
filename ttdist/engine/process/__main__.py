"""``python -m ttdist.engine.process DATA_FD CONTROL_FD LIVENESS_FD``: the engine process (``child``)."""

import sys

from ttdist.engine.process.child import main

sys.exit(main(sys.argv[1:]))
