"""kernelrace: the kernels, the executors that spread their chunks, and the harness.

Data flows one way: ``kernels.<kernel>`` plan work into chunks and run them through
``kernels.executors``; ``kernels.registry`` lists (kernel, strategy) pairs;
``kernels.harness`` times, calibrates and reports, and nothing in the kernels
imports it.
"""

__version__ = "0.1.0"
