"""Network files made elsewhere, such as the authors' release: what a file was built with when it comes without its
args.json (ckpt_settings), and a training run that starts from one (finetune, --init_from).

Sits above core.checkpoint and core.machinery, which it imports; the Solver calls finetune at step 0; nothing here
imports inference/ or demo/.
"""
