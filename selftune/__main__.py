"""`python -m selftune` is the `selftune` command."""

from selftune.cli import main

raise SystemExit(main())
