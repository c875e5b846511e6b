"""The training run's machinery, not the method: one process per GPU (distributed), a batch in chunks (micro_batch)
and the memory that takes (memory), torch.compile (compile), what a run reports (train_log, plots), checksums of
its checkpoints (integrity) and what a resumed run must share with the one it continues (run_identity).

The Solver imports these. They import the method only where their job is the method's networks (compile wraps the
losses; memory counts a Solver's step, so nothing in core/ imports memory: main.py and scripts do).
"""
