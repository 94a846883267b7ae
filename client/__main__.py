"""`python -m client` runs the `synerdiff` command."""

from __future__ import annotations

import sys

from client.cli import main

sys.exit(main())
