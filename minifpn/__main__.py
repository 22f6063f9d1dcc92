"""``python -m minifpn`` is the same as the ``minifpn`` command."""

import sys

from minifpn.cli import main

sys.exit(main())
