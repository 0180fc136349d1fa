"""The forecaster's V2 adapter (service/core/protocol/v2.py).

Inputs: ``x`` FP32 ``[N, T]`` (each series' history, padded; NaN marks a missing value), ``lengths`` INT64 ``[N]``
or ``[N, 1]``, ``start`` BYTES ``[N]`` (each series' first time stamp; not needed for a model counting plain
steps) and, for a model with covariates, ``dynamic_feat`` FP32 ``[N, T + H, C]`` (known covariates, each row's
values from its first step on). Output: ``quantiles`` FP32 ``[N, H, Q]`` on the trained grid (``parameters``
of the model metadata lists the levels). The rows go to the same batcher as ``/forecast``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np

from service.core.app import model_info
from service.core.artifact import ArtifactMeta
from service.core.protocol.v2 import Tensor, V2Error, tensor
from service.tasks.forecast.calendar import Calendar, TimeError
from service.tasks.forecast.engine import build_row


class ForecastV2:
    def __init__(
        self,
        meta: ArtifactMeta,
        calendar: Calendar,
        max_length: int,
        max_series: int,
        run: Callable[[list[np.ndarray]], Awaitable[tuple[np.ndarray, str]]],
    ) -> None:
        self.meta, self.fc, self.calendar = meta, meta.forecasting, calendar
        self.max_length, self.max_series, self.run = max_length, max_series, run
        self.model_name = meta.model_name
        self._version = meta.model_version

    def metadata(self) -> dict:
        fc = self.fc
        inputs = [
            {"name": "x", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "lengths", "datatype": "INT64", "shape": [-1, 1]},
            {"name": "start", "datatype": "BYTES", "shape": [-1]},
        ]
        if fc.covariates:
            inputs.append({"name": "dynamic_feat", "datatype": "FP32", "shape": [-1, -1, len(fc.covariates)]})
        return {
            "platform": "onnxruntime_onnx",
            "inputs": inputs,
            "outputs": [{"name": "quantiles", "datatype": "FP32", "shape": [-1, fc.horizon, len(fc.quantiles)]}],
            "parameters": {
                "quantiles": fc.quantiles,
                "horizon": fc.horizon,
                "frequency": fc.frequency,
                "covariates": fc.covariates,
                "max_length": self.max_length,
                "max_series": self.max_series,
            },
        }

    async def version(self, ask: bool) -> str:
        if ask:
            self._version = (await model_info())["model_version"]
        return self._version

    async def infer(self, request: dict, binaries: dict) -> tuple[str, dict[str, Tensor]]:
        fc = self.fc
        inputs = {spec.get("name"): spec for spec in request["inputs"] if isinstance(spec, dict)}
        allowed = {"x", "lengths", "start"} | ({"dynamic_feat"} if fc.covariates else set())
        unknown = set(inputs) - allowed
        if unknown or len(inputs) != len(request["inputs"]):
            raise V2Error(
                f"inputs: {sorted(map(str, unknown))} unknown; the model takes {sorted(allowed)}", reason="bad_input"
            )
        for name in (
            "x",
            "lengths",
            *(["start"] if fc.frequency != "step" else []),
            *(["dynamic_feat"] if fc.covariates else []),
        ):
            if name not in inputs:
                raise V2Error(f"input '{name}' is missing (see GET /v2/models/{self.model_name})", reason="bad_input")
        x = tensor(inputs["x"], binaries.get("x"), "FP32", "x")
        lengths = tensor(inputs["lengths"], binaries.get("lengths"), "INT64", "lengths")
        if x.ndim != 2:
            raise V2Error(f"input 'x': shape {list(x.shape)}, the model takes [N, T]", reason="shape")
        n, t = x.shape
        if not 1 <= n <= self.max_series:
            raise V2Error(f"input 'x': {n} series, must be 1..{self.max_series} per request", reason="too_many_series")
        if lengths.shape not in ((n,), (n, 1)):
            raise V2Error(f"input 'lengths': shape {list(lengths.shape)}, must be [{n}] or [{n}, 1]", reason="shape")
        lengths = lengths.reshape(-1)
        starts = [0] * n
        if "start" in inputs:
            spec = inputs["start"]
            raw = spec.get("data")
            if spec.get("datatype") != "BYTES" or "start" in binaries or not isinstance(raw, list) or len(raw) != n:
                raise V2Error(
                    f"input 'start': BYTES [{n}] as JSON 'data' (one time stamp string per series)", reason="shape"
                )
            for i, s in enumerate(raw):
                try:
                    starts[i] = self.calendar.step_index(str(s))
                except TimeError as e:
                    raise V2Error(f"input 'start'[{i}]: {e}", reason="bad_time") from None
        cov = None
        if fc.covariates:
            cov = tensor(inputs["dynamic_feat"], binaries.get("dynamic_feat"), "FP32", "dynamic_feat")
            if cov.ndim != 3 or cov.shape[0] != n or cov.shape[2] != len(fc.covariates):
                raise V2Error(
                    f"input 'dynamic_feat': shape {list(cov.shape)}, "
                    f"must be [{n}, T + {fc.horizon}, {len(fc.covariates)}]",
                    reason="shape",
                )
        rows = []
        for i, length in enumerate(lengths.tolist()):
            if not 1 <= length <= min(t, self.max_length):
                raise V2Error(f"input 'lengths'[{i}]: {length}, must be 1..{min(t, self.max_length)}", reason="length")
            y = np.ascontiguousarray(x[i, :length], dtype=np.float32)
            if np.isinf(y).any() or not np.isfinite(y).any():
                raise V2Error(
                    f"input 'x'[{i}]: infinite values, or no observed value (NaN marks missing)", reason="non_finite"
                )
            c = None
            if cov is not None:
                if cov.shape[1] < length + fc.horizon:
                    raise V2Error(
                        f"input 'dynamic_feat': {cov.shape[1]} steps, row {i} needs {length + fc.horizon}",
                        reason="feature_length",
                    )
                c = np.ascontiguousarray(cov[i, : length + fc.horizon], dtype=np.float32)
            rows.append(build_row(fc, self.calendar, y, starts[i], c))
        q, version = await self.run(rows)  # DeadlinePassed: 504
        self._version = version
        if not np.isfinite(q).all():
            raise V2Error("the model's output is not finite for a series (scale the input)", 422, "non_finite_output")
        q = q.astype("<f4")
        return version, {"quantiles": ("FP32", list(q.shape), q)}


__all__ = ["ForecastV2"]
