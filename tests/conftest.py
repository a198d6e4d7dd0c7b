import os

# Tests never reach W&B's servers, whatever credentials the machine has.
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
