"""``python -m digitlab``: the command line (what ``digitlab serve --allow-train`` runs)."""

import sys

from digitlab.cli import main

sys.exit(main())
