"""``python scripts/state-bytes.py``: see scripts/state_bytes.py (the importable module)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from state_bytes import main

if __name__ == "__main__":
    raise SystemExit(main())
