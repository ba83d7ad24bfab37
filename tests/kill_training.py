"""Trains as the train job does and kills itself with SIGKILL at one moment around a
checkpoint's write: `python kill_training.py JOB.pickle`, the pickle holding (manifest,
config, outputs, checkpoint root, iteration, moment). The moments (`MOMENTS`):

- "before the checkpoint": the step's loss row and validation are done, the checkpoint's
  temporary file is created but holds nothing yet;
- "while writing the checkpoint": half of the checkpoint's bytes are written.

Exits 3 if training ended without the moment coming."""

from __future__ import annotations

import io
import os
import pickle
import signal
import sys
from pathlib import Path

import torch

from ntclass.train.run import train

MOMENTS = ("before the checkpoint", "while writing the checkpoint")


def kill_at(iteration: int, moment: str) -> None:
    """Makes torch.save kill the process when it writes the checkpoint of `iteration`."""
    save = torch.save
    name = f"model_checkpoint_{iteration}"

    def killing_save(obj, f, *args, **kwargs):
        if name not in Path(str(f)).name:
            return save(obj, f, *args, **kwargs)
        if moment == "while writing the checkpoint":
            data = io.BytesIO()
            save(obj, data, *args, **kwargs)
            with open(f, "wb") as out:
                out.write(data.getvalue()[:len(data.getvalue()) // 2])
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = killing_save


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as job:
        manifest, cfg, outputs, root, iteration, moment = pickle.load(job)
    assert moment in MOMENTS, moment
    kill_at(iteration, moment)
    train(manifest, cfg, outputs, root)
    sys.exit(3)
