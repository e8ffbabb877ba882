"""mlp / gru on PyTorch (CPU here): determinism, gradient accumulation, mixed precision, progress,
cancellation, data-parallel guard. Skipped where torch is not installed."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="mlp/gru need PyTorch: pip install -e '.[dl]'")

from mystocks_gpu.gpu_ops.models import (  # noqa: E402
    ModelParamError,
    ProgressEvent,
    TrainingCancelled,
    TrainingDataError,
    make_model,
)
from tests.unit.models.model_data import needs_gpu, regression_data  # noqa: E402

MLP = {"hidden_sizes": [16, 8], "epochs": 3, "batch_size": 32, "learning_rate": 0.01, "seed": 7}
GRU = {"seq_len": 4, "hidden_size": 8, "epochs": 1, "batch_size": 32, "learning_rate": 0.01, "seed": 7}


def _data(n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    return regression_data(n=n, p=8, dtype=np.float32)


def test_same_seed_same_weights_and_the_caller_rng_is_untouched() -> None:
    X, y = _data()
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = make_model("mlp", MLP, backend="cpu", n_threads=1).fit(X, y)
    after = torch.rand(3)
    b = make_model("mlp", MLP, backend="cpu", n_threads=1).fit(X, y)
    assert torch.equal(before, after)
    for (ka, va), (kb, vb) in zip(a.net_.state_dict().items(), b.net_.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_gradient_accumulation_equals_the_larger_batch() -> None:
    """k micro-batches of b rows accumulated == one batch of k*b rows (k*b divides n)."""
    X, y = _data(256)
    big = make_model("mlp", {**MLP, "batch_size": 64, "accum_steps": 1}, backend="cpu", n_threads=1).fit(X, y)
    acc = make_model("mlp", {**MLP, "batch_size": 32, "accum_steps": 2}, backend="cpu", n_threads=1).fit(X, y)
    small = make_model("mlp", {**MLP, "batch_size": 32, "accum_steps": 1}, backend="cpu", n_threads=1).fit(X, y)
    np.testing.assert_allclose(acc.predict(X), big.predict(X), rtol=0, atol=1e-5)
    assert np.abs(small.predict(X) - big.predict(X)).max() > 1e-3


def test_progress_per_epoch_with_loss_and_cancel_within_one_epoch() -> None:
    X, y = _data()
    events: list[ProgressEvent] = []
    make_model("mlp", {**MLP, "epochs": 4}, backend="cpu", n_threads=1).fit(X, y, progress=events.append)
    assert [(e.unit, e.done, e.total) for e in events] == [("epoch", i, 4) for i in range(1, 5)]
    # the reported loss is the epoch's mean squared error over all rows (finite, positive)
    assert all(e.loss is not None and 0 < e.loss < 100 for e in events)
    events.clear()
    polls = iter([False, False, True])
    with pytest.raises(TrainingCancelled) as ei:
        make_model("mlp", {**MLP, "epochs": 4}, backend="cpu", n_threads=1).fit(
            X, y, progress=events.append, should_stop=lambda: next(polls))
    assert [e.done for e in events] == [1, 2] and ei.value.unit == "epoch"


def test_final_epoch_loss_matches_an_independent_evaluation_trend() -> None:
    """Training lowers the MSE measured with numpy on the model's own predictions."""
    X, y = _data(256)
    short = make_model("mlp", {**MLP, "epochs": 1}, backend="cpu", n_threads=1).fit(X, y)
    long = make_model("mlp", {**MLP, "epochs": 8}, backend="cpu", n_threads=1).fit(X, y)
    assert np.mean((long.predict(X) - y) ** 2) < np.mean((short.predict(X) - y) ** 2)


def test_gru_reads_rows_as_sequences() -> None:
    X, y = _data()
    g = make_model("gru", GRU, backend="cpu", n_threads=1).fit(X, y)
    assert g.predict(X).shape == (X.shape[0],)
    with pytest.raises(TrainingDataError, match="multiple of seq_len"):
        make_model("gru", {**GRU, "seq_len": 3}, backend="cpu", n_threads=1).fit(X, y)


def test_devices_need_the_gpu_backend() -> None:
    with pytest.raises(ModelParamError, match="'devices'.*gpu backend"):
        make_model("mlp", MLP, backend="cpu", devices=(0, 1))


PARAM_CHANGES = [
    ("mlp", "hidden_sizes", [12, 8]),
    ("mlp", "epochs", 2),
    ("mlp", "batch_size", 64),
    ("mlp", "accum_steps", 2),
    ("mlp", "learning_rate", 0.001),
    ("mlp", "weight_decay", 0.5),
    ("mlp", "dropout", 0.3),
    ("mlp", "mixed_precision", "bf16"),
    ("mlp", "seed", 8),
    ("gru", "seq_len", 2),
    ("gru", "hidden_size", 6),
    ("gru", "num_layers", 2),
    ("gru", "epochs", 2),
    ("gru", "batch_size", 64),
    ("gru", "accum_steps", 2),
    ("gru", "learning_rate", 0.001),
    ("gru", "weight_decay", 0.5),
    ("gru", "dropout", 0.3),
    ("gru", "seed", 8),
]


@pytest.mark.parametrize(("family", "name", "other"), PARAM_CHANGES)
def test_every_parameter_changes_the_model(family: str, name: str, other: object) -> None:
    X, y = _data(128)
    base = MLP if family == "mlp" else GRU
    a = make_model(family, base, backend="cpu", n_threads=1).fit(X, y)
    b = make_model(family, {**base, name: other}, backend="cpu", n_threads=1).fit(X, y)
    assert not np.array_equal(a.predict(X), b.predict(X))


def test_mixed_precision_auto_is_off_on_cpu() -> None:
    X, y = _data(128)
    a = make_model("mlp", {**MLP, "mixed_precision": "auto"}, backend="cpu", n_threads=1).fit(X, y)
    b = make_model("mlp", {**MLP, "mixed_precision": "off"}, backend="cpu", n_threads=1).fit(X, y)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


@pytest.mark.gpu
@needs_gpu
def test_gpu_training_reaches_the_cpu_quality() -> None:
    X, y = _data(4096)
    cpu = make_model("mlp", {**MLP, "epochs": 10}, backend="cpu", n_threads=1).fit(X, y)
    gpu = make_model("mlp", {**MLP, "epochs": 10}, backend="gpu").fit(X, y)
    mse_c = np.mean((cpu.predict(X) - y) ** 2)
    mse_g = np.mean((gpu.predict(X) - y) ** 2)
    assert mse_g < 1.2 * mse_c
    assert gpu.fit_info is not None and gpu.fit_info.engine.startswith("torch-cuda")
