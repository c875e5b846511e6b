"""StarGAN v2, the method (SPEC sections 1-5), in the reference's rooms: model.py (G, F, E, D), losses.py (the four
objectives), solver.py (the training step and loop that wire them), data_loader.py, checkpoint.py, wing.py and
align.py (the face alignment of CelebA-HQ), utils.py, sampling.py and video.py (grids and videos), config.py (the CLI).

Beside it, subpackages that serve it, each importing the method and never imported by it unless it says so:
machinery/ (the training run: processes, chunks, compile, logs, safe loading, checksums; the Solver and checkpoint
use it), files/ (network files made elsewhere: a file's settings, fine-tuning from one; the Solver uses finetune),
inference/ (uses of a trained network: translate, the studio, export), demo/ (the quickstart's synthetic data and
its score).
"""
