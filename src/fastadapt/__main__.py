"""``python -m fastadapt`` runs the command line."""

import sys

from fastadapt.cli import main

sys.exit(main())
