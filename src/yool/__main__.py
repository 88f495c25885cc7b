"""`python -m yool` is the `yool` command."""

from yool.cli import main

raise SystemExit(main())
