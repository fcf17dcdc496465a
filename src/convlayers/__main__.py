"""``python -m convlayers``: the command line (see :mod:`convlayers.cli`)."""

import sys

from convlayers.cli import main

if __name__ == "__main__":
    sys.exit(main())
