import os

import pytest

# Tests never reach W&B's servers, whatever credentials the machine has.
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def own_wandb_service_per_process():
    """A test that runs W&B in this process leaves its service's address in WANDB_SERVICE, and every `archlab`
    subprocess started later would share that service (a SIGKILLed one would keep its run id held there for the
    rest of the session); each command gets its own service instead, as it does outside the suite."""
    os.environ.pop("WANDB_SERVICE", None)
    yield
    os.environ.pop("WANDB_SERVICE", None)
