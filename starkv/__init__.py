"""starkv: KV-cache compression for GUI vision-language agents (STaR-KV and a pluggable interface).

Usable without Ray or MLflow::

    with starkv.attach(model, starkv.build("snapkv"), budget=20, layout=layout):
        model.generate(**inputs)
"""

from starkv.budget import capacity, kept_length, plan_selection
from starkv.compressor import COMPRESSORS, Compressor, ScorerCompressor, available, build, register
from starkv.context import LayerContext
from starkv.hook import Attachment, attach
from starkv.layout import PromptLayout
from starkv.storage import KVQuant, KVStorage

__all__ = [
    "COMPRESSORS", "Attachment", "Compressor", "KVQuant", "KVStorage", "LayerContext", "PromptLayout", "ScorerCompressor",
    "attach", "available", "build", "capacity", "kept_length", "plan_selection", "register",
]
