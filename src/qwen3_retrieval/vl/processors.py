"""What to compute for the Qwen3-VL models, for every engine: inputs to token ids and image patches.

The prompt layouts come from :mod:`qwen3_retrieval.vl.prompts`; images are read and cut by
:mod:`qwen3_retrieval.vl.media`. Text is always tokenized as plain characters, so a text that spells
``<|image_pad|>`` or ``<|im_end|>`` stays those characters; only the layout's own control tokens and the
vision markers of real images are special. Consecutive text parts are tokenized together, as transformers
tokenizes a rendered prompt between two special tokens, so the ids equal the official ones.

Truncation:

* **Embedding** keeps the template and every image, and cuts the input's text to fit ``max_length``. (The
  official code truncates the rendered prompt, which drops the ``assistant\\n`` ending the vector is pooled on
  and fails when the cut lands inside an image; below ``max_length`` the two agree.)
* **Reranking** follows the official rule exactly: the last 5 tokens are kept, and of the rest every special
  token is kept and non-special tokens from the start until ``max_length`` tokens are reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from qwen3_retrieval.options import VLEmbedderOptions, VLRerankerOptions
from qwen3_retrieval.processors import finished_vectors
from qwen3_retrieval.tokenization import TextTokenizer
from qwen3_retrieval.vl.media import ImageSettings, SizedImage, size_image
from qwen3_retrieval.vl.prompts import (
    IM_END,
    IMAGE_PAD,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    Control,
    ImageSlot,
    Part,
    VideoSlot,
    VLInput,
    embedding_parts,
    rerank_parts,
)
from qwen3_retrieval.vl.video import SizedVideo, size_video

KEPT_SUFFIX = 5
"""The official reranker keeps a prompt's last 5 tokens (``<|im_end|>\\n<|im_start|>assistant\\n``) whole."""


@dataclass(frozen=True, eq=False)
class VLSequence:
    """One prompt as an engine runs it: token ids, and the images and videos its pad runs stand for."""

    ids: list[int]
    images: list[SizedImage]
    videos: list[SizedVideo] = field(default_factory=list)


class VLPrompts:
    """Turns prompt parts into ids, and images into patches, for one checkpoint.

    Args:
        tokenizer: The checkpoint's tokenizer.
        settings: The vision tower's pixel settings and the pixel bounds.
        allow_urls: Fetch ``http(s)://`` images.
        model: The checkpoint's name, for errors.

    Raises:
        ValueError: The tokenizer lacks a control or vision token (not a Qwen3-VL checkpoint).
    """

    def __init__(self, tokenizer: TextTokenizer, settings: ImageSettings, allow_urls: bool, model: str) -> None:
        self.tokenizer, self.settings, self.allow_urls = tokenizer, settings, allow_urls
        ids = {}
        for token in ("<|im_start|>", IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD):
            token_id = tokenizer.token_id(token)
            if token_id is None:
                raise ValueError(f"{model!r} has no {token} token; is it a Qwen3-VL checkpoint?")
            ids[token] = token_id
        self.ids = ids
        self.special = set(tokenizer.special_ids())

    def images(self, item: VLInput, what: str) -> list[SizedImage]:
        """Check and size ``item``'s images (errors name ``what``); their pixels are read when they run."""
        return [
            size_image(source, self.settings, f"{what}.image[{i}]", allow_urls=self.allow_urls)
            for i, source in enumerate(item.images)
        ]

    def videos(self, item: VLInput, what: str) -> list[SizedVideo]:
        """Check, sample and size ``item``'s videos (errors name ``what``); their frames are read when they run."""
        return [
            size_video(frames, self.settings, f"{what}.video[{i}]", allow_urls=self.allow_urls)
            for i, frames in enumerate(item.videos)
        ]

    def chunks(self, parts: Sequence[Part], videos: Sequence[SizedVideo] = ()) -> list[str | Control | _Slot]:
        """Lay each video out pair by pair, then join consecutive texts.

        transformers tokenizes the text between two special tokens as one string, so a pair's timestamp joins
        the text before it.
        """
        laid: list[str | Control | _Slot] = []
        for part in parts:
            if isinstance(part, VideoSlot):
                for pair, stamp in enumerate(videos[part.index].timestamps()):
                    laid += [stamp, _FramePair(part.index, pair)]
            else:
                laid.append(part)
        joined: list[str | Control | _Slot] = []
        for piece in laid:
            if isinstance(piece, str) and joined and isinstance(joined[-1], str):
                joined[-1] += piece
            else:
                joined.append(piece)
        return joined

    def token_ids(
        self, chunk: str | Control | _Slot, images: list[SizedImage], limit: int, videos: Sequence[SizedVideo] = ()
    ) -> list[int]:
        """The ids of one chunk: text, a control token, or an image's or a frame pair's markers and pads.

        Text is read as plain characters, at most ``limit`` tokens of it.
        """
        if isinstance(chunk, Control):
            return [self.ids[chunk.token]]
        if isinstance(chunk, ImageSlot):
            pads = [self.ids[IMAGE_PAD]] * images[chunk.index].tokens
            return [self.ids[VISION_START], *pads, self.ids[VISION_END]]
        if isinstance(chunk, _FramePair):
            pads = [self.ids[VIDEO_PAD]] * videos[chunk.video].pair_tokens
            return [self.ids[VISION_START], *pads, self.ids[VISION_END]]
        return self.tokenizer.plain([chunk], limit=limit)[0]


@dataclass(frozen=True)
class _FramePair:
    """One pair of a video's frames (a temporal patch) in a laid-out prompt."""

    video: int
    pair: int


_Slot = ImageSlot | _FramePair


class VLEmbeddingProcessor:
    """Token ids and patches of inputs for a Qwen3-VL-Embedding model, and vectors from its pooled states.

    Args:
        prompts: The checkpoint's :class:`VLPrompts`.
        options: The embedder's options (``max_length``, ``dimensions``, ``normalize``).
        hidden_size: The model's output size.
    """

    def __init__(self, prompts: VLPrompts, options: VLEmbedderOptions, hidden_size: int) -> None:
        from qwen3_retrieval.processors import check_dimensions

        check_dimensions(options, hidden_size)
        self.prompts, self.options = prompts, options
        self.dimension = options.dimensions or hidden_size

    def sequences(self, items: Sequence[VLInput], instruction: str | None, what: str = "inputs") -> list[VLSequence]:
        """Return each input's official prompt ids (instruction rule applied) with its image patches.

        Raises:
            ValueError: An image cannot be read, or an input's images and template alone exceed ``max_length``.
        """
        return [self._sequence(item, instruction, f"{what}[{i}]") for i, item in enumerate(items)]

    def _sequence(self, item: VLInput, instruction: str | None, what: str) -> VLSequence:
        images, videos = self.prompts.images(item, what), self.prompts.videos(item, what)
        chunks = self.prompts.chunks(embedding_parts(item, instruction), videos)
        limit = self.options.max_length
        # The layout ends [user content..., <|im_end|>, "\n", <|im_start|>, "assistant\n"]: the text the user
        # gave is the chunk before those four, and it is the only part that is cut.
        text_at = len(chunks) - 5 if isinstance(chunks[-5], str) else None
        pieces = [
            [] if i == text_at else self.prompts.token_ids(c, images, limit, videos) for i, c in enumerate(chunks)
        ]
        fixed = sum(map(len, pieces))
        if text_at is not None:
            chunk = chunks[text_at]
            assert isinstance(chunk, str)
            starts_turn = not item.images and not item.videos  # then "user\n" starts the chunk, and is not cut
            head = len(self.prompts.tokenizer.plain(["user\n"])[0]) if starts_turn else 0
            if limit - fixed >= head:
                pieces[text_at] = self.prompts.tokenizer.plain([chunk], limit=limit - fixed)[0]
            else:
                fixed += head
        if fixed > limit:
            raise ValueError(
                f"{what}: its instruction, images, videos and the prompt template take {fixed} tokens, more than "
                f"max_length={limit}; shorten the instruction, pass fewer or smaller images (max_pixels) or fewer "
                "frames, or raise max_length"
            )
        return VLSequence([token for piece in pieces for token in piece], images, videos)

    def vectors(self, pooled: torch.Tensor) -> np.ndarray:
        """Return float32 vectors: cut to ``dimensions``, then normalised (if asked), as the text models'."""
        return finished_vectors(pooled, self.dimension, self.options.normalize)


class VLRerankingProcessor:
    """Prompt ids and patches of (query, document) pairs for a Qwen3-VL-Reranker model.

    Args:
        prompts: The checkpoint's :class:`VLPrompts`.
        options: The reranker's options (``instruction``, ``max_length``).
    """

    def __init__(self, prompts: VLPrompts, options: VLRerankerOptions) -> None:
        self.prompts, self.options = prompts, options

    def sequences(self, query: VLInput, documents: Sequence[VLInput], instruction: str | None) -> list[VLSequence]:
        """Return each pair's official prompt, truncated by the official rule, with the pair's image patches.

        Raises:
            ValueError: An image cannot be read.
        """
        task = self.options.instruction if instruction is None else instruction
        query_images, query_videos = self.prompts.images(query, "query"), self.prompts.videos(query, "query")
        out = []
        for i, document in enumerate(documents):
            images = query_images + self.prompts.images(document, f"documents[{i}]")
            videos = query_videos + self.prompts.videos(document, f"documents[{i}]")
            chunks = self.prompts.chunks(rerank_parts(query, document, task), videos)
            # No more than max_length tokens of any text can survive the cut below: read no more than that.
            limit = self.options.max_length
            ids = [t for c in chunks for t in self.prompts.token_ids(c, images, limit, videos)]
            out.append(VLSequence(self._truncated(ids), images, videos))
        return out

    def _truncated(self, ids: list[int]) -> list[int]:
        body, suffix = ids[:-KEPT_SUFFIX], ids[-KEPT_SUFFIX:]
        limit = self.options.max_length
        if len(body) <= limit:
            return ids
        special = self.prompts.special
        room = limit - sum(1 for t in body if t in special)
        kept: list[int] = []
        for token in body:
            if token in special:
                kept.append(token)
            elif room > 0:
                kept.append(token)
                room -= 1
        return kept + suffix
