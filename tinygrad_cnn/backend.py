"""Transitional: the names that lived here, from their new homes (xp, threads, blas,
allocator, kernels.gemm). Removed once nothing imports it."""
from .allocator import reuse_freed_memory  # noqa: F401
from .blas import blas_threads, can_set_blas_threads  # noqa: F401
from .kernels.gemm import empty_matrix  # noqa: F401
from .threads import (ShardGroup, batch_shard, current_shard, num_threads, parallel_ranges,  # noqa: F401
                      run_serially)
from .xp import array_module, is_array, is_floating  # noqa: F401
