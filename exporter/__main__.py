"""`python -m exporter` is the same as the `m365-mail-exporter` command."""

from .cli import main

raise SystemExit(main())
