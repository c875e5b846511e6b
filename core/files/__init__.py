"""Network files: reading them without running code (safe_load), what a file was built with when it comes without
its args.json (ckpt_settings), and a training run that starts from one (finetune, --init_from).

May import core's model, checkpoint and data_loader and core.machinery; imports nothing of inference/ or demo/.
"""
