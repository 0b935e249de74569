"""``python -m kernels.harness.report``: the same as ``kernelrace report``."""

from kernels.harness.report.cli import main

raise SystemExit(main())
