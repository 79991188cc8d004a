"""``python -m tftoolkit``: the same as the ``tftoolkit`` command."""

import sys

from tftoolkit.cli import main

sys.exit(main())
