"""Image-only Qwen2.5-VL processor.

In transformers 5.x the stock ``Qwen2_5_VLProcessor`` always builds a video sub-processor, and the only
one there is needs torchvision. GUI agents only send screenshots, so this subclass drops the video part
and works with the PIL image backend (``Qwen2VLImageProcessorPil``) on machines without torchvision.
"""

from __future__ import annotations

from transformers import Qwen2_5_VLProcessor
from transformers.processing_utils import ProcessorMixin

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video sub-processor (no torchvision needed).

    ``ProcessorMixin`` derives the list of sub-processors from the ``__init__`` signature, so leaving out
    ``video_processor`` here is what removes it (also from save/reload).
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or IMAGE_TOKEN
        self.video_token = getattr(tokenizer, "video_token", None) or VIDEO_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)


__all__ = ["Qwen2_5_VLImageOnlyProcessor"]
