import pytest
import torch

from wdcollapse.data.tensors import PermutationBatches, StepGroups, class_balanced_subset


def test_class_balanced_subset_is_balanced_seeded_and_checked():
    labels = torch.arange(1000) % 7
    idx = class_balanced_subset(labels, 20, 7, seed=3)
    assert torch.bincount(labels[idx], minlength=7).tolist() == [20] * 7
    assert torch.equal(idx, class_balanced_subset(labels, 20, 7, seed=3))
    assert not torch.equal(idx, class_balanced_subset(labels, 20, 7, seed=4))
    assert torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == 140
    with pytest.raises(ValueError, match="num_per_class=200 but class 6, the smallest, has only 142 training"):
        class_balanced_subset(labels, 200, 7, seed=0)


def test_permutation_batches_cover_every_sample_once_and_depend_on_seed_and_epoch():
    x = torch.arange(50).float().unsqueeze(1)
    y = torch.arange(50)
    epoch = [0]
    batches = PermutationBatches(x, y, 16, seed=1, epoch=lambda: epoch[0])
    assert len(batches) == 4
    first = torch.cat([b[1] for b in batches])
    assert sorted(first.tolist()) == list(range(50))
    assert torch.equal(first, torch.cat([b[1] for b in batches]))  # same epoch, same order
    assert all(torch.equal(bx.squeeze(1).long(), by) for bx, by in batches)
    epoch[0] = 1
    assert not torch.equal(first, torch.cat([b[1] for b in batches]))


def test_step_groups_partition_the_batches_in_order():
    x, y = torch.arange(50).float().unsqueeze(1), torch.arange(50)
    batches = PermutationBatches(x, y, 8, seed=2, epoch=lambda: 0)  # 7 batches
    groups = StepGroups(batches, 3)
    assert len(groups) == 3 and [len(g) for g in groups] == [3, 3, 1]
    flat = [b for g in groups for b in g]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(flat, batches)) and len(flat) == len(batches)
    with pytest.raises(ValueError, match="steps_per_call must be a positive integer"):
        StepGroups(batches, 0)
