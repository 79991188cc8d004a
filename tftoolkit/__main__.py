"""``python -m tftoolkit``: the verbs of the ``tftoolkit`` command. Importing the package
loads TensorFlow first, so its start-up banners are not quieted here as the command
quiets them."""

import sys

from tftoolkit.cli import main

sys.exit(main())
