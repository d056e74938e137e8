"""Cross-entropy and SGD momentum / weight decay together (the digits classifier's step): the
two branches of issue 12 meet in one statement, one update relation and one softmax relation."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_zk import CommitCallback, ProofCallback, RunDirectory, VerifiableStrategy
from lightning_zk.audit.proofs import _read_chain, verify_run
from tests.fixed_mode.test_cross_entropy import Classifier, class_data
from tests.models import trainer_kwargs


class MomentumClassifier(Classifier):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.25, momentum=0.9, weight_decay=1e-3)


def test_cross_entropy_with_momentum_and_weight_decay_is_proved(tmp_path):
    L.seed_everything(0, verbose=False)
    path = tmp_path / "run"
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=path, mode="fixed"), max_steps=4,
                        callbacks=[CommitCallback(), ProofCallback()], **trainer_kwargs())
    model = MomentumClassifier()
    trainer.fit(model, train_dataloaders=DataLoader(class_data(8), batch_size=4, shuffle=True))
    report = verify_run(path)
    assert report.ok, report.problems
    assert report.steps_proven == 4 and report.ledger == "verified"
    statements, _, _ = _read_chain(RunDirectory(path))
    assert {(s.loss, s.momentum, s.weight_decay) for s in statements} == {("xent", 58982, 66)}
    # the optimizer really carries its buffers (the momentum is not a no-op)
    opt = trainer.optimizers[0]
    assert all(opt.state[p]["momentum_buffer"].abs().sum() > 0 for p in model.parameters())
