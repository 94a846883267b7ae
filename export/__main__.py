"""``python -m export``: see export/cli.py."""

from __future__ import annotations

import sys

from export.cli import main

sys.exit(main())
