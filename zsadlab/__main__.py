"""``python -m zsadlab ...`` (and ``torchrun ... -m zsadlab train ...``): the command line."""
import sys

from .cli import main

sys.exit(main())
