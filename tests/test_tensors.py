import pytest
import torch

from wdcollapse.data.tensors import PermutationBatches, class_balanced_subset


def test_class_balanced_subset_is_balanced_seeded_and_checked():
    labels = torch.arange(1000) % 7
    idx = class_balanced_subset(labels, 20, 7, seed=3)
    assert torch.bincount(labels[idx], minlength=7).tolist() == [20] * 7
    assert torch.equal(idx, class_balanced_subset(labels, 20, 7, seed=3))
    assert not torch.equal(idx, class_balanced_subset(labels, 20, 7, seed=4))
    assert torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == 140
    with pytest.raises(ValueError, match="num_per_class=200 but class 0 has only 143 "):
        class_balanced_subset(labels, 200, 7, seed=0)


def test_permutation_batches_cover_every_sample_once_and_depend_on_seed_and_epoch():
    x = torch.arange(50).float().unsqueeze(1)
    y = torch.arange(50)
    epoch = [0]
    batches = PermutationBatches(x, y, 16, seed=1, epoch=lambda: epoch[0])
    assert len(batches) == 4
    first = torch.cat([b[1] for b in batches])
    assert sorted(first.tolist()) == list(range(50))
    assert torch.equal(first, torch.cat([b[1] for b in batches]))   # same epoch, same order
    assert all(torch.equal(bx.squeeze(1).long(), by) for bx, by in batches)
    epoch[0] = 1
    assert not torch.equal(first, torch.cat([b[1] for b in batches]))
