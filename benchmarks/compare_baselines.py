"""Does HyTuning do what it claims? The arms at several seeds, on one budget, with intervals.

The command of the evidence harness, a package of its own (``benchmarks/evidence/``: presets and arms, the runner,
the store, the analysis, the report, the command line); the usage and every option: ``--help``, or the docstring of
:mod:`evidence.cli`::

    python benchmarks/compare_baselines.py --preset cpu
    python benchmarks/compare_baselines.py --preset evidence --output_dir DIR --analyse
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/: the package, synthetic_task, _bootstrap

from evidence.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
