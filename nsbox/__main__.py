"""``python -m nsbox`` is the ``nsbox`` command."""

import sys

from ._cli import main

sys.exit(main())
