"""Each proof statement binds the traced graph of every step it proves, and the verifier accepts a
graph only if it is the step the relations stand for, derived from the statement by itself."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lightning_zk import CommitCallback, ProofCallback
from lightning_zk.audit.proofs import _read_chain, verify_run
from lightning_zk.fixed import FixedPointConfig
from lightning_zk.fixed.intercept import FixedPointTracer
from lightning_zk.fixed.template import provable_digests
from lightning_zk.ledger.rundir import RunDirectory
from tests.fixed_mode.test_cross_entropy import fit_classifier


@pytest.fixture(scope="module")
def proven(tmp_path_factory):
    path = tmp_path_factory.mktemp("graphs") / "run"
    fit_classifier(path, steps=3, n=8, callbacks=[CommitCallback(), ProofCallback()])
    return path


def test_statements_carry_each_steps_graph_and_the_verifier_derives_them(proven):
    run = RunDirectory(proven)
    records = run.read_steps()
    statements, _, _ = _read_chain(run)
    assert [s.graphs[0].hex() for s in statements] == [r.extra["graph_sha256"] for r in records]
    stmt = statements[0]
    derived = provable_digests(stmt.dims, stmt.batch_size, FixedPointConfig(16, 24), lr=stmt.lr,
                               loss="xent")
    assert records[0].extra["graph_sha256"] in derived
    mse = provable_digests(stmt.dims, stmt.batch_size, FixedPointConfig(16, 24), lr=stmt.lr)
    assert not derived & mse  # the same layers with another loss: other graphs, other statements
    assert verify_run(proven).ok


def test_a_record_whose_graph_differs_from_the_statement_is_refused(proven, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(proven, path)
    steps = path / "steps.jsonl"
    lines = steps.read_text().splitlines()
    record = json.loads(lines[1])  # (the graph digest is outside the ledger leaf: the proof binds it)
    record["extra"]["graph_sha256"] = "ab" * 32
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    steps.write_text("\n".join(lines) + "\n")
    report = verify_run(path)
    assert not report.ok and any("statement field graphs[0]" in p for p in report.problems)


def test_a_committed_graph_that_is_not_the_template_is_refused(tmp_path, monkeypatch):
    """A trainer that commits (and binds) a graph other than the one its relations prove: the
    verifier's own template says no, though every proof and record is consistent."""
    import lightning_zk.strategies.fixed as fixed_mode

    graph = FixedPointTracer.graph

    def another_step(self, outputs):
        return [*graph(self, outputs), {"op": "aten.mul.Tensor", "in": ["batch:0", "const"],
                                        "shapes": [[4, 8]], "consts": [{"fixed": 131072}]}]

    monkeypatch.setattr(FixedPointTracer, "graph", another_step)
    monkeypatch.setattr(fixed_mode.FixedPointSession, "_check_provable", lambda *a: ())
    path = tmp_path / "run"
    fit_classifier(path, steps=2, n=8, callbacks=[CommitCallback(), ProofCallback()])
    monkeypatch.undo()
    report = verify_run(path)
    assert not report.ok
    assert any("is not the step the proof's relations stand for" in p for p in report.problems)


def test_a_record_showing_another_graph_than_its_digest_is_refused(proven, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(proven, path)
    steps = path / "steps.jsonl"
    lines = steps.read_text().splitlines()
    record = json.loads(lines[0])
    record["extra"]["graph"] = record["extra"]["graph"][:-1]  # shows a step without its last op
    lines[0] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    steps.write_text("\n".join(lines) + "\n")
    report = verify_run(path)
    assert not report.ok and any("does not hash" in p for p in report.problems)


class _CloningLinear(torch.nn.Linear):
    """A Linear whose forward adds an op (a clone) the canonical network does not have: the
    values are the same, the traced graph is not."""

    def forward(self, x):
        return super().forward(x.clone())


def test_a_network_the_verifier_would_not_rebuild_is_refused_at_step_0(tmp_path):
    """The trainer checks each step against the canonical network the verifier rebuilds from a
    statement, not against a copy of the user's: a network spelled otherwise is refused before
    anything is trained, not after hours of training and proving (it once trained and proved,
    and only verify_run refused it)."""
    import lightning as L
    from torch import nn
    from torch.nn import functional as F

    from lightning_zk import VerifiableStrategy
    from lightning_zk.strategies.fixed import NotProvableError
    from tests.fixed_mode.models import regression_loader
    from tests.models import trainer_kwargs

    class Spelled(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), _CloningLinear(8, 3))

        def training_step(self, batch, batch_idx):
            return F.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run", mode="fixed"),
                        max_steps=2, callbacks=[CommitCallback(), ProofCallback()],
                        **trainer_kwargs())
    with pytest.raises(NotProvableError, match="aten.clone.*canonical|canonical.*aten.clone"):
        trainer.fit(Spelled(), train_dataloaders=regression_loader())
    assert not RunDirectory(tmp_path / "run").read_steps()
