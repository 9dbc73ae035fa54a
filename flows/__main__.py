"""``python -m flows`` runs the CLI."""

from flows.cli.main import main

raise SystemExit(main())
