"""`python -m bench [SUITES] --quick --out DIR`: run the benchmark suites (see bench/runner.py)."""

import sys

from bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
