"""``python -m orchard.cli``: the ``orchard`` command."""

from orchard.cli import main

raise SystemExit(main())
