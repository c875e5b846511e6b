"""Helpers of scripts/benchmark.py (and scripts/op_breakdown.py): the workload (networks, batches, loaders), one timing
loop, the FLOP count and the numerics comparison. The scripts are thin command lines and reports over these."""
