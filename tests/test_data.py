import pytest
import torch

from engine.data import data_shape, global_batch_indices, load_dataset, rank_slice
from engine.models import MODELS, build_model, param_count
from engine.registry import model_context


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_rank_slices_tile_the_same_global_batch_whatever_the_rank_count(world_size):
    for step in (0, 1, 200):  # 200 crosses an epoch boundary of 1438 / 32 batches
        batch = global_batch_indices(step, 1438, 32, seed=0)
        slices = [rank_slice(batch, r, world_size) for r in range(world_size)]
        assert torch.equal(torch.cat(slices), batch)
        assert len(set(batch.tolist())) == 32


def test_epochs_visit_every_sample_once():
    seen = torch.cat([global_batch_indices(s, 100, 10, seed=3) for s in range(10)])
    assert sorted(seen.tolist()) == list(range(100))
    assert not torch.equal(global_batch_indices(10, 100, 10, seed=3), global_batch_indices(0, 100, 10, seed=3))


def test_digits_are_the_real_scikit_learn_images():
    from sklearn.datasets import load_digits

    data = load_dataset("digits")
    reference = load_digits()
    assert len(data.train_x) + len(data.test_x) == len(reference.images) == 1797
    assert float(data.train_x.max()) == 1.0 and data.shape.num_classes == 10


def test_text_windows_predict_the_next_character():
    data = load_dataset("text", context=16)
    x, y = data.batch(torch.tensor([0, 100]))
    assert x.shape == y.shape == (2, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert data.shape.vocab_size == int(torch.cat([data.train_x, data.test_x]).max()) + 1


def test_cifar10_missing_names_the_expected_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", data_dir=str(tmp_path))


def test_cifar10_reads_the_official_python_format(tmp_path):
    import pickle

    import numpy as np

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.full((4, 3072), 255, dtype=np.uint8), b"labels": [1, 2, 3, 4]}
        (tmp_path / name).write_bytes(pickle.dumps(batch))
    data = load_dataset("cifar10", data_dir=str(tmp_path))
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
    assert float(data.train_x.max()) == 1.0 and data.train_y.tolist()[:4] == [1, 2, 3, 4]


@pytest.mark.parametrize("model", list(MODELS))
def test_every_preset_builds_and_counts_its_parameters_on_the_meta_device(model):
    dataset = "text" if model == "gpt" else "digits"
    for size in MODELS[model].presets:
        shape = data_shape(dataset, model_context(model, size))
        assert param_count(model, size, shape) > 0
    tiny = build_model(model, "tiny", data_shape(dataset, model_context(model, "tiny")))
    assert param_count(model, "tiny", data_shape(dataset, model_context(model, "tiny"))) == sum(
        p.numel() for p in tiny.parameters()
    )


def test_seed_cnn_is_sized_to_its_input():
    from engine.models import CNN

    cnn = CNN(data_shape("cifar10"), c1=64, c2=128, fc=256)
    assert cnn(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert cnn.fc1.in_features == 128 * 8 * 8


@pytest.mark.parametrize("name", ["digits", "synthetic", "text"])
def test_registry_knows_how_many_training_samples_each_dataset_has(name):
    from engine.registry import DATASETS

    longest_context = max(model_context("gpt", size) for size in MODELS["gpt"].presets)
    assert DATASETS[name].train_items == len(load_dataset(name, context=longest_context))
