"""Run the trainer as python -m trainer, the same as modelqa-train."""

import sys

from trainer.cli import main

sys.exit(main())
