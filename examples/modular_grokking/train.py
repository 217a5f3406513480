"""Train the tiny grokking MoE: python examples/modular_grokking/train.py OUT_DIR [--short]."""

import sys
from pathlib import Path

try:
    from grokwatch.example_trainer import main
except ModuleNotFoundError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from grokwatch.example_trainer import main

if __name__ == "__main__":
    sys.exit(main())
