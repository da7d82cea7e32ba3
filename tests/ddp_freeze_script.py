"""Run under `torchrun --nproc_per_node 2 tests/ddp_freeze_script.py CKPT OUT`: FreezeScheduler through DDP."""

import os
import sys

import torch
import transformers as T

from hf_transfer_cnn import FreezeScheduler
from hf_transfer_cnn.recipe import end_process


class Data(torch.utils.data.Dataset):
    def __init__(self, n=32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 40, 40, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class Snapshot(T.TrainerCallback):
    """State dict after each optimizer step, to check nothing moves before the unfreeze."""

    def __init__(self):
        self.states = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.states[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}


def main():
    ckpt, out = sys.argv[1], sys.argv[2]
    model = T.AutoModelForImageClassification.from_pretrained(ckpt)
    args = T.TrainingArguments(output_dir=out, max_steps=6, per_device_train_batch_size=4, learning_rate=0.05,
                               weight_decay=0.1, use_cpu=True, report_to=[], save_strategy="no",
                               logging_steps=1, disable_tqdm=True, seed=0)
    sched = FreezeScheduler(unfreeze_at_step=3, num_stages=1, lr_factor=0.5)
    snap = Snapshot()
    trainer = T.Trainer(model=model, args=args, train_dataset=Data(), callbacks=[sched, snap])
    trainer.train()
    rank = int(os.environ.get("RANK", 0))
    torch.save({"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "world_size": trainer.args.world_size,
                "ddp": type(trainer.model_wrapped).__name__,
                "at_step3": snap.states[3],
                "log": trainer.state.log_history}, os.path.join(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
    end_process(0)  # closes the process group and skips teardown, where gloo's threads can abort a finished process
