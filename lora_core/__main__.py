"""``python -m lora_core reproduce``: the main job (see ``lora_core.suite.reproduce``)."""

import sys

from .suite.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
