"""``python -m orchard.cli``: the ``orchard`` command."""

from _orchard_launch import main  # Ctrl-C ends the process as the installed command's does

raise SystemExit(main())
