"""Progress lines for log files: whole lines with step, loss, elapsed time and ETA, the last step always shown."""

from __future__ import annotations

import re

import lightning as L
import torch

from mmrerank.core.progress import ProgressLines, format_seconds


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        loss = (self.w * batch[0]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 1)), batch_size=2)


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 59.6, 75, 3725)] == ["0:00", "1:00", "1:15", "1:02:05"]


def test_lines_name_the_step_the_loss_and_the_eta(capsys):
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[ProgressLines("tiny", every_s=0.0)])
    trainer.fit(Tiny())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("tiny:")]
    assert lines[0] == "tiny: 3 steps"
    steps = [re.match(r"tiny: step (\d)/3 \((\d+) %\), loss [0-9.]+, \d+:\d\d elapsed, ETA \d+:\d\d$", line)
             for line in lines[1:]]
    assert all(steps) and [int(m.group(1)) for m in steps] == [1, 2, 3] and steps[-1].group(2) == "100"


def test_only_every_so_often_but_always_the_last(capsys):
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[ProgressLines("tiny", every_s=3600.0)])
    trainer.fit(Tiny())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("tiny: step")]
    assert len(lines) == 1 and lines[0].startswith("tiny: step 4/4 (100 %)")
