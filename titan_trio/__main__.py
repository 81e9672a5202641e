"""``python -m titan_trio`` is the ``titan`` command."""

from titan_trio.cli import main

raise SystemExit(main())
