"""The training run's machinery, not the method: one process per GPU (distributed), a batch in chunks (micro_batch)
and the memory that takes (memory), torch.compile (compile), what a run reports (train_log, plots), reading network
files without running code (safe_load), checksums of the checkpoints (integrity) and what a resumed run must share
with the one it continues (run_identity).

The Solver and core.checkpoint import these. They import only the method's ground floor (data_loader, losses,
config); memory counts the step of the Solver it is given instead of importing it.
"""
