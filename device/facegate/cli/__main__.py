"""`python -m facegate.cli`."""
import sys

from . import main

sys.exit(main())
