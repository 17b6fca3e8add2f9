"""`python -m consistency_models` is the `cm` command."""

import sys

from .cli import main

sys.exit(main())
