"""StateDigester (background digests: same digests, order, bounded queue, errors surfaced) and the
versioned state digest formats."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lightning_zk.ledger.digester import DigestWorkerError, StateDigester
from lightning_zk.ledger.errors import SchemaError
from lightning_zk.ledger.schema import MANIFEST, check
from lightning_zk.ledger.state import (
    DEFAULT_STATE_DIGEST,
    STATE_DIGEST_FORMATS,
    STATE_DIGEST_V1,
    STATE_DIGEST_V2,
    StateError,
    StateSnapshot,
    UnknownDigestFormatError,
    load_snapshot,
    run_digest_format,
    save_snapshot,
    snapshot,
    state_digest,
)


def _adam_states(steps: int = 6, digest_format: str = STATE_DIGEST_V2, reuse: bool = True):
    """Snapshots after each Adam step (in-place updates), taken as the session takes them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8), torch.randn(32, 4)
    spare = []
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        snap = snapshot(model, [opt], torch.float32, digest_format=digest_format,
                        reuse=spare.pop() if spare and reuse else None)
        yield model, opt, snap, spare


@pytest.mark.parametrize("fmt", STATE_DIGEST_FORMATS)
def test_background_digests_equal_inline_digests_in_order(fmt):
    inline = [snap.digest() for _, _, snap, _ in _adam_states(digest_format=fmt, reuse=False)]
    assert len(set(inline)) == len(inline)
    digester = StateDigester(background=True, max_in_flight=2)
    out = []
    for step, (_, _, snap, spare) in enumerate(_adam_states(digest_format=fmt)):
        digester.submit(snap, step)
        for token, state, digest in digester.ready():
            out.append((token, digest))
            spare.append(state)  # its buffers take a later snapshot, as in the session
    while digester.in_flight:
        out += [(token, digest) for token, _, digest in digester.drain()]
    digester.close()
    assert out == list(enumerate(inline))


def test_snapshot_is_a_copy_and_reuse_writes_into_the_old_buffers():
    model = nn.BatchNorm1d(3)
    first = snapshot(model, [], torch.float32)
    for name, t in model.state_dict().items():
        assert first.tensors[f"model/{name}"].data_ptr() != t.data_ptr()
    model(torch.randn(4, 3))  # running stats and num_batches_tracked change in place
    assert int(first.tensors["model/num_batches_tracked"]) == 0
    ptrs = {k: t.data_ptr() for k, t in first.tensors.items()}
    second = snapshot(model, [], torch.float32, reuse=first)
    assert {k: t.data_ptr() for k, t in second.tensors.items()} == ptrs
    assert second.digest() == snapshot(model, [], torch.float32).digest()


def test_a_live_snapshot_copies_nothing_and_digests_as_a_copy():
    for model, opt, copy, _ in _adam_states(steps=2, reuse=False):
        live = snapshot(model, [opt], torch.float32, digest_format=STATE_DIGEST_V2, live=True)
        assert live.live and not copy.live
        assert live.digest() == copy.digest()
        state = dict(model.state_dict())
        for name, t in state.items():  # the model's own memory, not a copy
            assert live.tensors[f"model/{name}"].data_ptr() == t.data_ptr()
        moment = opt.state_dict()["state"][0]["exp_avg"]
        assert live.tensors["optim/0/state/0/exp_avg"].data_ptr() == moment.data_ptr()


def test_a_materialized_live_snapshot_is_a_copy_later_updates_do_not_reach():
    model = nn.BatchNorm1d(3)
    live = snapshot(model, [], torch.float32, live=True)
    kept = live.materialized()
    before = kept.digest()
    assert not kept.live and kept.digest() == live.digest()
    for name, t in kept.tensors.items():
        assert t.data_ptr() != live.tensors[name].data_ptr()
    model(torch.randn(4, 3))  # running stats change in place: the live view sees it, the copy not
    assert live.digest() != before and kept.digest() == before
    assert kept.materialized() is kept


def test_a_live_snapshot_of_tied_weights_is_saved_as_its_copy(tmp_path):
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    model[1].weight = model[0].weight  # one tensor under two names (tied embeddings)
    live = snapshot(model, [], torch.float32, digest_format=STATE_DIGEST_V2, live=True)
    assert live.shared == {"model/0.weight", "model/1.weight"}
    digest = save_snapshot(tmp_path / "tied.safetensors", live)  # safetensors refuses aliases
    assert digest == live.digest() == load_snapshot(tmp_path / "tied.safetensors").digest()


def test_a_live_snapshot_converts_what_is_committed_in_another_dtype_into_reused_buffers():
    model = nn.Linear(3, 2).double()  # computed in float64, committed as float32
    model.register_buffer("count", torch.zeros((), dtype=torch.int64))  # committed as it is
    first = snapshot(model, [], torch.float64, live=True)
    assert first.shared == {"model/count"} and first.tensors["model/weight"].dtype == torch.float32
    assert first.digest() == snapshot(model, [], torch.float64).digest()
    with torch.no_grad():
        model.weight += 1.0
        model.count += 1
    second = snapshot(model, [], torch.float64, reuse=first, live=True)
    assert second.tensors["model/weight"].data_ptr() == first.tensors["model/weight"].data_ptr()
    assert second.tensors["model/count"].data_ptr() == model.count.data_ptr()
    assert second.digest() == snapshot(model, [], torch.float64).digest()
    third = snapshot(model, [], torch.float64, reuse=second)  # a copy never writes into the model
    assert third.tensors["model/count"].data_ptr() != model.count.data_ptr()
    assert third.digest() == second.digest()


def test_backpressure_bounds_the_snapshots_in_flight():
    gate, started = threading.Event(), []

    def slow(state):
        started.append(state)
        gate.wait(10)
        return "0" * 64

    digester = StateDigester(background=True, max_in_flight=2, digest=slow)
    snap = StateSnapshot({}, {})
    digester.submit(snap, 0)
    digester.submit(snap, 1)
    blocked = threading.Thread(target=digester.submit, args=(snap, 2))
    blocked.start()
    time.sleep(0.3)
    assert blocked.is_alive() and digester.in_flight == 2  # the third waits for room
    gate.set()
    blocked.join(10)
    assert [t for t, _, _ in digester.drain()] == [0, 1, 2]
    digester.close()


@pytest.mark.parametrize("background", [True, False])
def test_a_digest_error_surfaces_as_a_typed_error_after_the_good_ones(background):
    def digest(state):
        if state.meta["n"] == 2:
            raise MemoryError("out of memory")
        return f"{state.meta['n']:064x}"

    digester = StateDigester(background=background, digest=digest)
    done = []
    with pytest.raises(DigestWorkerError, match="out of memory") as info:
        for n in range(5):
            digester.submit(StateSnapshot({}, {"n": n}), n)
            done += [t for t, _, _ in digester.ready()]
        while digester.in_flight:
            done += [t for t, _, _ in digester.drain()]
    assert isinstance(info.value.__cause__, MemoryError)
    assert done == [0, 1]  # never a step after the failed one
    with pytest.raises(DigestWorkerError):
        digester.drain()  # and it stays failed
    digester.discard()


def test_formats_are_versioned_and_self_describing(tmp_path):
    _, _, snap, _ = next(_adam_states())
    v2 = snap.digest()
    v1 = StateSnapshot(snap.tensors, snap.meta, STATE_DIGEST_V1).digest()
    assert v1 != v2 and len(v1) == len(v2) == 64
    assert v1 == state_digest(snap.tensors, snap.meta)  # v1 stays the default of the function
    assert DEFAULT_STATE_DIGEST == STATE_DIGEST_V2
    save_snapshot(tmp_path / "v2.safetensors", snap)
    loaded = load_snapshot(tmp_path / "v2.safetensors")
    assert loaded.digest_format == STATE_DIGEST_V2 and loaded.digest() == v2
    save_snapshot(tmp_path / "v1.safetensors", StateSnapshot(snap.tensors, snap.meta))
    loaded = load_snapshot(tmp_path / "v1.safetensors")  # a v1 file names no format
    assert loaded.digest_format == STATE_DIGEST_V1 and loaded.digest() == v1
    assert run_digest_format({}) == STATE_DIGEST_V1


def test_unknown_formats_are_refused_with_typed_errors(tmp_path):
    _, _, snap, _ = next(_adam_states())
    with pytest.raises(UnknownDigestFormatError, match="state/v9"):
        StateSnapshot(snap.tensors, snap.meta, "lightning-zk/state/v9").digest()
    with pytest.raises(UnknownDigestFormatError):
        run_digest_format({"state_digest_format": "sha3"})
    path = tmp_path / "s.safetensors"
    save_snapshot(path, snap)
    tensors = load_file(str(path))
    with open(path, "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    stored = json.loads(header["__metadata__"]["lightning_zk"])
    stored["digest_format"] = "lightning-zk/state/v9"
    save_file(tensors, str(path), metadata={"lightning_zk": json.dumps(stored)})
    with pytest.raises(StateError, match="unknown state digest format"):
        load_snapshot(path)


def test_the_manifest_schema_refuses_an_unknown_format():
    spec = MANIFEST.fields["state_digest_format"]
    for fmt in STATE_DIGEST_FORMATS:
        check(spec, fmt, "manifest.json")
    with pytest.raises(SchemaError, match="unknown state digest format"):
        check(spec, "lightning-zk/state/v9", "manifest.json")


def _reference_digest(tensors: dict, meta: dict, fmt: str) -> str:
    """The documented serialisation, fed piece by piece to a plain one-thread hash."""
    import hashlib
    import struct

    import blake3

    h = hashlib.sha256(fmt.encode()) if fmt == STATE_DIGEST_V1 else blake3.blake3(fmt.encode())

    def feed(data: bytes) -> None:
        h.update(struct.pack("<Q", len(data)))
        h.update(data)

    feed(struct.pack("<Q", len(tensors)))
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        feed(name.encode())
        feed(str(t.dtype).removeprefix("torch.").encode())
        feed(struct.pack(f"<{t.dim()}Q", *t.shape))
        feed(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    feed(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


@pytest.mark.parametrize("fmt", STATE_DIGEST_FORMATS)
@pytest.mark.parametrize("big", [False, True])
def test_digests_follow_the_documented_serialisation(fmt, big):
    """Gathering small pieces and hashing a large state on several threads change nothing."""
    g = torch.Generator().manual_seed(1)
    tensors = {f"model/{i}.bias": torch.randn(i + 1, generator=g) for i in range(40)}
    tensors["model/w"] = torch.randn(300, 300, generator=g)
    tensors["optim/0/state/0/step"] = torch.tensor(3.0, dtype=torch.float64)
    if big:  # past the threaded-hash threshold (64 MiB)
        tensors["model/huge"] = torch.randn(17 << 20, generator=g)
    meta = {"num_optimizers": 1, "lr": [0.1]}
    before = state_digest(tensors, meta, fmt)
    assert before == _reference_digest(tensors, meta, fmt)
    tensors["model/0.bias"][0] += 1.0  # a small piece (gathered) still counts
    assert state_digest(tensors, meta, fmt) != before
