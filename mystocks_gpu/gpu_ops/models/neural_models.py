"""Neural families on PyTorch (optional extra ``dl``): ``mlp`` and ``gru``.

Training (both): MSE loss, Adam (``learning_rate``, ``weight_decay``), ``epochs`` passes over
the rows in a seeded shuffled order. Gradient accumulation: each micro-batch of ``batch_size``
rows contributes ``loss / accum_steps`` to the gradients, and the optimiser steps every
``accum_steps`` micro-batches (and once more at the end of an epoch for a remainder), so
``batch_size=b, accum_steps=k`` follows ``batch_size=k*b, accum_steps=1`` when ``k*b`` divides
the row count. Mixed precision: ``torch.autocast`` with bfloat16 (``auto`` = on for CUDA, off on
the CPU; ``bf16`` forces it on either device); the loss is computed in float32, no gradient
scaler is needed for bfloat16. Progress: one event per epoch with the epoch's mean loss, then a
``should_stop`` poll.

Data parallel: with the GPU backend and more than one ordinal in ``devices`` the net is wrapped in
``torch.nn.DataParallel(device_ids=devices)``, which splits each micro-batch across the granted
GPUs and sums the gradients on the first one (DistributedDataParallel would need one process per
GPU; for models of this size the single-process split is enough). On the CPU, and with one
device, the net runs unwrapped.

Determinism: weights are initialised and rows shuffled from ``seed`` inside a forked RNG (the
caller's torch RNG state is untouched), so on the CPU the same data, seed and thread count give
the same ``state_dict`` bytes. ``n_threads`` sets torch's CPU threads for the duration of ``fit``;
``predict`` leaves the process-wide setting alone (changing it per call costs more than a small
batch: a scoring process sets ``torch.set_num_threads`` once). ``predict`` runs in eval mode in
chunks of 65 536 rows (float32 inputs, autocast as in training) and returns float64.

Payload: ``torch.save({"state_dict": ...})`` of the unwrapped module, loaded with
``weights_only=True``. GRU rows are ``seq_len`` steps of ``n_features / seq_len`` features, oldest
first (see ``training_rows.stack_lags``).
"""

from __future__ import annotations

import io
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.backend import GPU, to_host
from mystocks_gpu.gpu_ops.models.exceptions import ModelIntegrityError, TrainingDataError
from mystocks_gpu.gpu_ops.models.model_base import Model, Reporter, require
from mystocks_gpu.gpu_ops.models.model_params import GruParams, MlpParams

_PREDICT_CHUNK = 1 << 16


def _torch() -> Any:
    return require("torch", "mlp/gru", "torch", "dl")


class _TorchModel(Model):
    payload_format = "torch-state-dict"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.net_: Any = None

    def _check_library(self) -> None:
        require("torch", self.family, "torch", "dl")

    def _libraries(self) -> list[str]:
        return ["torch"]

    # -- what mlp / gru define -----------------------------------------------------------------
    def _build(self, n_features: int) -> Any:
        raise NotImplementedError

    def _check_features(self, n_features: int) -> None:
        """Raise :class:`TrainingDataError` when X's width does not fit the architecture."""

    # -- shared machinery ----------------------------------------------------------------------
    def _device(self) -> Any:
        torch = _torch()
        if self.backend != GPU:
            return torch.device("cpu")
        return torch.device(f"cuda:{self.devices[0]}" if self.devices else "cuda")

    def _autocast(self, device: Any) -> Any:
        torch = _torch()
        mode = self.params.mixed_precision
        on = mode == "bf16" or (mode == "auto" and device.type == "cuda")
        if not on:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    @contextmanager
    def _threads(self) -> Any:
        torch = _torch()
        before = torch.get_num_threads()
        change = self.n_threads is not None and self.backend != GPU and self.n_threads != before
        if change:
            torch.set_num_threads(self.n_threads)
        try:
            yield
        finally:
            if change:
                torch.set_num_threads(before)

    def _fit(self, X: Any, y: Any, rep: Reporter) -> tuple[str, bool | None]:
        torch = _torch()
        p = self.params
        n, f = X.shape
        self._check_features(f)
        dev = self._device()
        rep.start("epoch", p.epochs)
        fork = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=fork), self._threads():
            torch.manual_seed(p.seed)
            net = self._build(f).to(dev)
            model = net
            if dev.type == "cuda" and len(self.devices) > 1:
                model = torch.nn.DataParallel(net, device_ids=list(self.devices))
            opt = torch.optim.Adam(net.parameters(), lr=float(p.learning_rate),
                                   weight_decay=float(p.weight_decay))
            Xt = torch.as_tensor(np.ascontiguousarray(to_host(X), dtype=np.float32)) \
                if dev.type == "cpu" else torch.as_tensor(X, device=dev).float()
            yt = torch.as_tensor(np.asarray(to_host(y), dtype=np.float32)) \
                if dev.type == "cpu" else torch.as_tensor(y, device=dev).float()
            gen = torch.Generator().manual_seed(p.seed)
            net.train()
            for epoch in range(p.epochs):
                perm = torch.randperm(n, generator=gen).to(Xt.device)
                opt.zero_grad(set_to_none=True)
                total, k = torch.zeros((), device=dev), 0  # summed on the device: no sync per batch
                for s in range(0, n, p.batch_size):
                    idx = perm[s:s + p.batch_size]
                    xb, yb = Xt[idx].to(dev, non_blocking=True), yt[idx].to(dev, non_blocking=True)
                    with self._autocast(dev):
                        out = model(xb).reshape(-1)
                    loss = torch.nn.functional.mse_loss(out.float(), yb)
                    (loss / p.accum_steps).backward()
                    total += loss.detach() * idx.numel()
                    k += 1
                    if k % p.accum_steps == 0:
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                if k % p.accum_steps:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                rep.step(epoch + 1, float(total) / n)
        net.eval()
        self.net_ = net
        return f"torch-{dev.type}" + (f"-dp{len(self.devices)}" if model is not net else ""), None

    def _predict(self, X: Any) -> Any:
        torch = _torch()
        dev = self._device()
        out = np.empty(X.shape[0], dtype=np.float64)
        Xh = X if self.backend == GPU else np.ascontiguousarray(X, dtype=np.float32)
        with torch.no_grad():  # the process's torch thread count (set once by the caller)
            for s in range(0, X.shape[0], _PREDICT_CHUNK):
                xb = torch.as_tensor(Xh[s:s + _PREDICT_CHUNK], device=dev).float()
                with self._autocast(dev):
                    pr = self.net_(xb).reshape(-1)
                out[s:s + xb.shape[0]] = pr.float().cpu().numpy()
        return out

    def _payload(self) -> tuple[bytes, dict[str, Any]]:
        torch = _torch()
        bio = io.BytesIO()
        state = {k: v.detach().cpu() for k, v in self.net_.state_dict().items()}
        torch.save({"state_dict": state}, bio)
        return bio.getvalue(), {}

    def _load_payload(self, payload: bytes, n_features: int, extra: dict[str, Any]) -> None:
        torch = _torch()
        try:
            obj = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
            net = self._build(n_features)
            net.load_state_dict(obj["state_dict"])
        except Exception as exc:  # torch raises assorted errors on corrupt / mismatched payloads
            raise ModelIntegrityError(f"corrupt {self.family} payload: {type(exc).__name__}: {exc}") from exc
        net.eval()
        self.net_ = net.to(self._device())


def _mlp(torch: Any, n_in: int, hidden: tuple[int, ...], dropout: float) -> Any:
    layers: list[Any] = []
    for h in hidden:
        layers += [torch.nn.Linear(n_in, h), torch.nn.ReLU()]
        if dropout > 0:
            layers.append(torch.nn.Dropout(dropout))
        n_in = h
    layers.append(torch.nn.Linear(n_in, 1))
    return torch.nn.Sequential(*layers)


class MlpModel(_TorchModel):
    """``mlp``: feed-forward regression net (see :class:`MlpParams`)."""

    family = "mlp"
    params_type = MlpParams

    def _build(self, n_features: int) -> Any:
        p: MlpParams = self.params
        return _mlp(_torch(), n_features, p.hidden_sizes, float(p.dropout))


class GruModel(_TorchModel):
    """``gru``: GRU over ``seq_len`` steps, last hidden state -> linear head (see :class:`GruParams`)."""

    family = "gru"
    params_type = GruParams

    def _check_features(self, n_features: int) -> None:
        if n_features % self.params.seq_len:
            raise TrainingDataError(f"gru: n_features ({n_features}) must be a multiple of seq_len "
                                    f"({self.params.seq_len}): rows are seq_len steps of equal width")

    def _build(self, n_features: int) -> Any:
        torch = _torch()
        p: GruParams = self.params
        step = n_features // p.seq_len

        class GruNet(torch.nn.Module):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                super().__init__()
                self.gru = torch.nn.GRU(step, p.hidden_size, num_layers=p.num_layers,
                                        batch_first=True,
                                        dropout=float(p.dropout) if p.num_layers > 1 else 0.0)
                self.drop = torch.nn.Dropout(float(p.dropout))
                self.head = torch.nn.Linear(p.hidden_size, 1)

            def forward(self, x: Any) -> Any:
                seq, _ = self.gru(x.reshape(x.shape[0], p.seq_len, step))
                return self.head(self.drop(seq[:, -1, :]))

        return GruNet()
