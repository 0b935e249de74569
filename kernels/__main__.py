"""``python -m kernels`` is the ``kernelrace`` command."""

from kernels.harness.cli import main

raise SystemExit(main())
