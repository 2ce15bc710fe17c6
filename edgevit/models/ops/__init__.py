"""Export-friendly building blocks that stand in for custom CUDA/C++ kernels of the original code.

Each op is written in standard PyTorch ops (static index tables, masked matrix forms) so
``torch.export`` and every runtime can consume it, and has a plain reference formulation that the
tests compare it with. Import from the submodules (``ops.selective_scan`` is both a module and the
function models call, so nothing is re-exported here).
"""
