"""The harness: timing runner, machine calibration, report, compare and the CLI.

It imports the kernels; the kernels never import it.
"""
