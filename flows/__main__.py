"""``python -m flows`` runs the CLI."""

from flows.cli import main

raise SystemExit(main())
