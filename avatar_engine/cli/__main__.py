"""``python -m avatar_engine.cli``: the ``avatar-engine`` command."""
import sys

from avatar_engine.cli import main

sys.exit(main())
