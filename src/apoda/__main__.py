"""`python -m apoda`: the command line (what the `apoda` script runs)."""

from apoda.cli import main

raise SystemExit(main())
