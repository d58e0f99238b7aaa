"""``python -m orchard``: the ``orchard`` command."""

from orchard.cli import main

raise SystemExit(main())
