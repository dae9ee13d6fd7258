"""``python -m execgate``: the command-line interface."""

from execgate.cli import main

raise SystemExit(main())
