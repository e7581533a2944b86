"""FLOPs, peak FLOP/s, tensor-core activity and memory profiling (filled by the L1 issue)."""
