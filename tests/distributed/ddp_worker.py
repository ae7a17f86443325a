"""Run by `accelerate launch`: train, recording the first optimiser step's gradients, then dump this rank."""

import sys

import torch

from maskfocus_cli.config import load_recipe
from maskfocus_cli.engine.trainer import Trainer

recipe, out = sys.argv[1], sys.argv[2]
trainer = Trainer(load_recipe(recipe))
first_grads: dict = {}
step = trainer.optimizer.step


def recording_step(*args, **kwargs):
    if not first_grads:
        for name, p in trainer.acc.unwrap_model(trainer.net).named_parameters():
            if p.grad is not None:  # under DeepSpeed ZeRO-2 the gradients are partitioned (and already applied)
                first_grads[name] = p.grad.detach().cpu().clone()
    return step(*args, **kwargs)


trainer.optimizer.step = recording_step
trainer.run()
rank = trainer.acc.process_index
state = {k: v.detach().cpu().clone() for k, v in trainer.acc.unwrap_model(trainer.net).state_dict().items()}
# the learning rate the optimiser that steps holds (under DeepSpeed: the engine's), against the scheduler's
lr = trainer.net.get_lr() if trainer.deepspeed else [g["lr"] for g in trainer.optimizer.param_groups]
torch.save({"state": state, "grads": first_grads, "history": trainer.state.history,
            "world": trainer.acc.num_processes, "lr": lr, "scheduler_lr": trainer.scheduler.get_last_lr()},
           f"{out}/rank{rank}.pt")
trainer.close()
