"""``python -m serve.cli``: the same as the ``abserve`` command."""

import sys

from serve.cli.parser import main

sys.exit(main())
