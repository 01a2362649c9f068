"""store.py and the recorder's on-disk path: same samples as in memory, files where asked, seeded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from debugatlas import DebugAtlasError
from debugatlas.capture import ActivationRecorder, image_picks
from debugatlas.capture import DiskVectors


def _feed(recorder: ActivationRecorder, n: int = 300, batch: int = 23, dim: int = 5) -> ActivationRecorder:
    gen = torch.Generator().manual_seed(0)
    for start in range(0, n, batch):
        b = min(batch, n - start)
        vec = torch.randn(b, 1, dim, generator=gen).to(torch.float16)
        recorder._pending = (vec, torch.zeros(b, 1, 2, dtype=torch.long))
        recorder.commit(torch.arange(start, start + b), torch.arange(start, start + b) % 3)
    recorder._flush()  # store the queued batches, as result() does first
    return recorder


@pytest.mark.parametrize("cap", [1000, 300, 40])
def test_disk_path_gives_the_same_samples_as_memory(tmp_path, cap):
    memory = _feed(ActivationRecorder("x", cap=cap, seed=5)).result()
    disk_rec = _feed(ActivationRecorder("x", cap=cap, seed=5, store_dir=tmp_path, disk_threshold_bytes=0))
    disk = disk_rec.result()
    assert disk_rec._disk is not None and isinstance(disk.vectors, torch.Tensor)
    assert torch.equal(disk.vectors, memory.vectors) and torch.equal(disk.image_ids, memory.image_ids)
    assert torch.equal(disk.labels, memory.labels) and disk.num_offered == memory.num_offered == 300
    # indexes like the in-memory tensor
    assert torch.equal(disk.subset(disk.labels == 1).vectors, memory.subset(memory.labels == 1).vectors)


def test_files_are_placed_where_asked_and_removed_on_reset(tmp_path):
    rec = _feed(ActivationRecorder("model.layer3", cap=100, store_dir=tmp_path / "store", disk_threshold_bytes=0,
                                   flush_batches=4))  # 14 batches: stored during the capture, not only in result()
    files = list((tmp_path / "store").glob("*.npy"))
    assert len(files) == 1 and files[0].name.startswith("vectors_model.layer3_")
    assert np.load(files[0], mmap_mode="r").shape == (100, 5)
    acts = rec.result()
    rec.reset()
    assert list((tmp_path / "store").iterdir()) == []
    assert acts.vectors.float().abs().sum() > 0  # the mapping outlives the file name


def test_temporary_directory_is_removed_by_close():
    rec = _feed(ActivationRecorder("x", cap=50, disk_threshold_bytes=0))
    directory = rec._disk.directory
    assert directory.exists()
    rec.close()
    assert not directory.exists()


def test_threshold_chooses_the_store():
    assert _feed(ActivationRecorder("x", cap=100, disk_threshold_bytes=100 * 5 * 2)).result() is not None
    small = _feed(ActivationRecorder("x", cap=100, disk_threshold_bytes=100 * 5 * 2))
    assert small._disk is None  # exactly at the threshold: memory
    big = _feed(ActivationRecorder("x", cap=100, disk_threshold_bytes=100 * 5 * 2 - 1))
    assert big._disk is not None
    big.close()
    assert _feed(ActivationRecorder("x", cap=100))._disk is None  # default: memory


def test_disk_reservoir_is_seeded(tmp_path):
    a = _feed(ActivationRecorder("x", cap=30, seed=1, store_dir=tmp_path / "a", disk_threshold_bytes=0)).result()
    b = _feed(ActivationRecorder("x", cap=30, seed=1, store_dir=tmp_path / "b", disk_threshold_bytes=0)).result()
    c = _feed(ActivationRecorder("x", cap=30, seed=2, store_dir=tmp_path / "c", disk_threshold_bytes=0)).result()
    assert torch.equal(a.image_ids, b.image_ids) and torch.equal(a.vectors, b.vectors)
    assert not torch.equal(a.image_ids, c.image_ids)
    assert a.image_ids.max() >= 150  # the reservoir keeps items from the whole stream


def test_bad_store_settings():
    with pytest.raises(DebugAtlasError, match="bfloat16.*HINT"):
        DiskVectors(None, 10, 3, torch.bfloat16)
    with pytest.raises(DebugAtlasError, match="disk_threshold_bytes"):
        ActivationRecorder("x", disk_threshold_bytes=-1)


def test_image_picks_depend_on_seed_and_id_only():
    ids = torch.tensor([3, 7, 3, 1000])
    p = image_picks(0, ids, 4, 20)
    assert p.shape == (4, 4) and p.min() >= 0 and p.max() < 20
    assert torch.equal(p[0], p[2]) and torch.equal(image_picks(0, ids[1:2], 4, 20)[0], p[1])
    assert not torch.equal(image_picks(1, ids, 4, 20), p)
    many = image_picks(0, torch.arange(20000), 1, 10).flatten()
    assert torch.bincount(many, minlength=10).min() > 1800  # roughly uniform


@pytest.mark.slow
def test_callback_with_disk_store_writes_the_same_atlas(tmp_path, digits_data):
    import json

    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from debugatlas.lightning import AtlasCallback, ClassifierModule
    from debugatlas.models import SmallCNN

    fast = {"layout": "pca", "render": False, "patches": False, "grid_sizes": (10,), "grid_size": 10, "n_pairs": 1}
    torch.manual_seed(0)
    module = ClassifierModule(SmallCNN(1, 10, width=8))
    summaries = []
    for name, store in (("memory", {}), ("disk", {"disk_threshold_bytes": 0, "store_dir": tmp_path / "store"})):
        callback = AtlasCallback("model.layer3", dirpath=tmp_path / name, subdir="",
                                 options={"samples_per_image": 2, "cap": 500, **store, **fast})
        pl.Trainer(accelerator="cpu", callbacks=[callback], logger=False, enable_progress_bar=False,
                   enable_model_summary=False).validate(module, DataLoader(digits_data[1], batch_size=64), verbose=False)
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        summaries.append({k: summary[k] for k in ("num_samples", "confusion_matrix", "pairs")})
    assert summaries[0] == summaries[1] and summaries[0]["num_samples"] == 500
    assert list((tmp_path / "store").iterdir()) == []  # the recorder deleted its file after the epoch


def test_large_reservoirs_go_to_disk_by_default():
    from debugatlas.capture import DISK_THRESHOLD_BYTES

    # 1,000,000 float16 vectors of 512 channels: 1 GB, above the default threshold
    assert ActivationRecorder("x", cap=1_000_000)._use_disk(torch.zeros(1, 512, dtype=torch.float16))
    # the default cap of 100,000 x 512 float16 (~100 MB) stays in memory
    assert not ActivationRecorder("x")._use_disk(torch.zeros(1, 512, dtype=torch.float16))
    assert 100_000 * 512 * 2 < DISK_THRESHOLD_BYTES < 1_000_000 * 512 * 2
    assert not ActivationRecorder("x", cap=1_000_000, disk_threshold_bytes=None)._use_disk(
        torch.zeros(1, 512, dtype=torch.float16))


@pytest.mark.parametrize("cap", [1000, 40])
def test_rule_column_survives_the_disk_path_and_the_reservoir(tmp_path, cap):
    def feed(recorder):
        gen = torch.Generator().manual_seed(1)
        for start in range(0, 200, 17):
            b = min(17, 200 - start)
            ids = torch.arange(start, start + b)
            vec = torch.randn(b, 2, 4, generator=gen)
            vec[:, :, 0] = (ids % 2).float().unsqueeze(1)  # column 0 tells the rule: odd ids guided
            rule = (ids % 2).to(torch.int8).unsqueeze(1).expand(b, 2)
            recorder.record(vec, torch.zeros(b, 2, 2, dtype=torch.long), rule, ids, ids % 3, spatial_shape=(4, 4))
        return recorder.result()

    memory = feed(ActivationRecorder("x", cap=cap, seed=2))
    disk = feed(ActivationRecorder("x", cap=cap, seed=2, store_dir=tmp_path, disk_threshold_bytes=0))
    for acts in (memory, disk):
        assert acts.rule is not None and len(acts.rule) == len(acts) == min(cap, 400)
        assert torch.equal(acts.rule.long(), acts.vectors[:, 0].float().round().long())
        assert torch.equal(acts.rule, acts.image_ids.remainder(2).to(torch.int8))
        assert acts.spatial_shape == (4, 4)
    assert torch.equal(memory.rule, disk.rule) and torch.equal(memory.image_ids, disk.image_ids)


def test_merge_shards_carries_the_rule():
    from debugatlas.capture import ActivationSet, merge_shards

    def shard(ids, rule):
        ids = torch.as_tensor(ids)
        n = len(ids)
        return ActivationSet(ids.float().unsqueeze(1), ids, ids % 2, ids % 2, torch.zeros(n, 2, dtype=torch.long),
                             "x", (4, 4), n, rule)

    guided = merge_shards([shard([0, 2, 4], torch.tensor([1, 0, 1], dtype=torch.int8)),
                           shard([1, 3, 0], None)], cap=100)
    assert guided.image_ids.tolist() == [0, 1, 2, 3, 4]
    assert guided.rule.tolist() == [1, 0, 0, 0, 1]  # rank 1's set (rule None) counts as random
    capped = merge_shards([shard([0, 2, 4], torch.tensor([1, 1, 1], dtype=torch.int8)),
                           shard([1, 3], None)], cap=3, seed=1)
    assert torch.equal(capped.rule, (capped.image_ids % 2 == 0).to(torch.int8))
    plain = merge_shards([shard([0, 2], None), shard([1], None)], cap=100)
    assert plain.rule is None
