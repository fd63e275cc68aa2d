"""``python -m simvue_otel``: the same as the ``simvue-otel`` command."""

import sys

from ._internal.cli import main

sys.exit(main())
