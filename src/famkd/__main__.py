"""`python -m famkd` runs the `famkd` command."""

from famkd.cli import main

raise SystemExit(main())
