"""The text classifier's V2 adapter (service/core/protocol/v2.py).

Input: ``text`` BYTES ``[N]`` (or ``[N, 1]``; JSON strings or tritonclient's binary encoding), UTF-8. Outputs:
``probabilities`` FP32 ``[N, C]`` (``parameters.classes`` of the model metadata names the columns), ``label``
BYTES ``[N]`` and ``attention`` FP32 ``[N, T]`` (each text's weights over its tokens, ``<s>`` first, zero beyond
its length). The texts go to the same batcher as ``/classify-text``, with the same limits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np

from service.core.app import model_info
from service.core.artifact import ArtifactMeta
from service.core.guard import Rejected
from service.core.protocol.v2 import Tensor, V2Error, bytes_tensor
from service.tasks.textclf.schema import parse_request


class TextClfV2:
    def __init__(
        self,
        meta: ArtifactMeta,
        max_texts: int,
        max_chars: int,
        encode: Callable[[list[str]], list[list[int]]],
        run: Callable[[list[list[int]]], Awaitable[tuple[np.ndarray, list[np.ndarray], str]]],
    ) -> None:
        self.meta, self.max_texts, self.max_chars, self.encode, self.run = meta, max_texts, max_chars, encode, run
        self.model_name = meta.model_name
        self._version = meta.model_version

    def metadata(self) -> dict:
        tc = self.meta.text_classification
        return {
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self.meta.classes)]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "attention", "datatype": "FP32", "shape": [-1, -1]},
            ],
            "parameters": {
                "classes": self.meta.classes,
                "max_texts": self.max_texts,
                "max_chars": self.max_chars,
                "max_tokens": tc.max_tokens if tc else None,
            },
        }

    async def version(self, ask: bool) -> str:
        if ask:
            self._version = (await model_info())["model_version"]
        return self._version

    async def infer(self, request: dict, binaries: dict) -> tuple[str, dict[str, Tensor]]:
        inputs = {spec.get("name"): spec for spec in request["inputs"] if isinstance(spec, dict)}
        if set(inputs) != {"text"} or len(request["inputs"]) != 1:
            raise V2Error(f"inputs: {sorted(map(str, inputs))}; the model takes one input, 'text' (BYTES [N])",
                          reason="bad_input")  # fmt: skip
        texts = bytes_tensor(inputs["text"], binaries.get("text"), "text")
        try:
            parse_request({"texts": texts}, self.max_texts, self.max_chars)  # the JSON route's limits
            ids = self.encode(texts)
        except Rejected as e:
            raise V2Error(str(e).replace("texts", "input 'text'", 1), reason=e.reason) from None
        probs, att, version = await self.run(ids)  # DeadlinePassed: 504
        self._version = version
        width = max(len(a) for a in att)
        attention = np.zeros((len(att), width), "<f4")
        for i, a in enumerate(att):
            attention[i, : len(a)] = a
        labels = [self.meta.classes[int(i)] for i in probs.argmax(1)]
        return version, {
            "probabilities": ("FP32", list(probs.shape), probs.astype("<f4")),
            "label": ("BYTES", [len(labels)], labels),
            "attention": ("FP32", list(attention.shape), attention),
        }


__all__ = ["TextClfV2"]
