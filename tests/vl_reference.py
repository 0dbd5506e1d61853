"""An independent transcription of the official Qwen3-VL-Embedding / Qwen3-VL-Reranker code, for the tests.

Written from QwenLM/Qwen3-VL-Embedding ``src/models/qwen3_vl_embedding.py`` and ``qwen3_vl_reranker.py`` (commit
8ce3aab) and qwen-vl-utils' ``fetch_image``, not from our package: messages are built as the official code
builds them, rendered by transformers' chat templating with the checkpoint's template, tokenized by
transformers' tokenizer, images resized by PIL and cut by transformers' own ``Qwen2VLImageProcessorPil``, and
run through transformers' ``Qwen3VLModel``. Only two steps of the official processor are transcribed, because
its class needs torchvision, which the CPU test environment does not have: each ``<|image_pad|>`` is expanded to
``grid.prod() // merge**2`` copies, and ``mm_token_type_ids`` marks image tokens with 1 (video tokens with 2).

Videos (lists of frames) follow the versions the official repository locks (its ``uv.lock``): qwen-vl-utils
0.0.14's ``fetch_video`` for a list of frames, transcribed with torchvision 0.23's tensor ``resize`` (float
pixels, bicubic with antialiasing, clamped and rounded back to 8 bits; none when the size is already right),
and transformers 4.57's ``Qwen3VLProcessor``, which replaces a video's whole
``<|vision_start|><|video_pad|><|vision_end|>`` by one ``<{t:.1f} seconds><|vision_start|>pads<|vision_end|>``
per pair of frames. The frames are cut by transformers' own ``Qwen3VLVideoProcessor.patchify`` and timed by its
``Qwen3VLProcessor._calculate_timestamps`` (both plain functions of tensors and lists). A video file is sampled
by the transcribed ``smart_nframes`` and ``linspace(...).round()`` from frames the test supplies
(:attr:`Official.decoded`): it wrote the file losslessly, so what decord would read is known without decoding.
"""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import torch

MIN_PIXELS = 4 * 32 * 32
MAX_PIXELS = 1800 * 32 * 32
MAX_FRAMES = 64
MAX_TOTAL_PIXELS = 10 * 768 * 32 * 32
EMBED_DEFAULT = "Represent the user's input."
RERANK_DEFAULT = "Given a search query, retrieve relevant candidates that answer the query."
JUDGE = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the "
    'answer can only be "yes" or "no".'
)


class Official:
    """The official pipeline on one checkpoint folder."""

    def __init__(self, folder: Path, *, reranker: bool = False, attention: str | None = "eager") -> None:
        """Load the checkpoint; ``attention`` None keeps transformers' default kernel (the official code's)."""
        from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration, Qwen3VLModel
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.decoded: dict[str, tuple[np.ndarray, float]] = {}
        """Video files' decoded frames and frame rate, by path: what decord would read from them (the tests write
        them losslessly, so their frames are known without decoding)."""
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
        self.template = (folder / "chat_template.jinja").read_text()
        if reranker:
            lm = Qwen3VLForConditionalGeneration.from_pretrained(
                folder, attn_implementation=attention, dtype=torch.float32
            ).eval()
            self.model = lm.model
            vocab = self.tokenizer.get_vocab()
            weights = lm.lm_head.weight.data
            self.score_weight = weights[vocab["yes"]] - weights[vocab["no"]]
        else:
            self.model = Qwen3VLModel.from_pretrained(folder, attn_implementation=attention, dtype=torch.float32).eval()

    # -- qwen-vl-utils ---------------------------------------------------------------------------------------
    @staticmethod
    def smart_resize(height: int, width: int, factor: int, min_pixels: float, max_pixels: float) -> tuple[int, int]:
        h_bar = max(factor, round(height / factor) * factor)
        w_bar = max(factor, round(width / factor) * factor)
        if h_bar * w_bar > max_pixels:
            beta = math.sqrt((height * width) / max_pixels)
            h_bar = math.floor(height / beta / factor) * factor
            w_bar = math.floor(width / beta / factor) * factor
        elif h_bar * w_bar < min_pixels:
            beta = math.sqrt(min_pixels / (height * width))
            h_bar = math.ceil(height * beta / factor) * factor
            w_bar = math.ceil(width * beta / factor) * factor
        return h_bar, w_bar

    @staticmethod
    def fetch_image(image: Any, min_pixels: int, max_pixels: int, factor: int = 32) -> Any:
        from PIL import Image

        if image.mode == "RGBA":
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image, mask=image.split()[3])
            image = background
        else:
            image = image.convert("RGB")
        width, height = image.size
        h_bar, w_bar = Official.smart_resize(height, width, factor, min_pixels, max_pixels)
        return image.resize((w_bar, h_bar))

    @staticmethod
    def fetch_video(frames: list[Any], total_pixels: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """qwen-vl-utils' ``fetch_video(ele, image_patch_size=16)`` for a list of frames."""
        # Each frame through fetch_image(..., image_patch_size=32): factor 64, its default bounds.
        images = [Official.fetch_image(frame, 4 * 64 * 64, 16384 * 64 * 64, factor=64) for frame in frames]
        nframes = math.ceil(len(images) / 2) * 2
        images += [images[-1]] * (nframes - len(images))
        video = torch.stack([torch.from_numpy(np.array(image).transpose(2, 0, 1)) for image in images])
        metadata = {"fps": 2.0, "frames_indices": list(range(len(video)))}
        return Official.resize_clip(video, total_pixels), metadata

    @staticmethod
    def fetch_video_file(decoded: np.ndarray, video_fps: float, fps: float = 1, max_frames: int = 64) -> Any:
        """qwen-vl-utils' ``fetch_video`` for a file, from its decoded ``(T, H, W, 3)`` frames (decord's reader).

        The official code passes ``fps`` 1 and ``max_frames`` 64, and no ``total_pixels``.
        """
        total = len(decoded)
        nframes = total / video_fps * fps  # smart_nframes
        nframes = min(min(max(nframes, math.ceil(4 / 2) * 2), math.floor(max_frames / 2) * 2), total)
        nframes = math.floor(nframes / 2) * 2
        assert 2 <= nframes <= total
        idx = torch.linspace(0, total - 1, nframes).round().long().tolist()
        video = torch.tensor(decoded[idx]).permute(0, 3, 1, 2)
        metadata = {"fps": video_fps, "frames_indices": idx}
        return Official.resize_clip(video, 128000 * 32 * 32 * 0.9), metadata

    @staticmethod
    def resize_clip(video: torch.Tensor, total_pixels: float) -> torch.Tensor:
        """The end of ``fetch_video``: bounds per frame, ``smart_resize`` and torchvision's tensor resize."""
        nframes, _, height, width = video.shape
        min_pixels = 128 * 32 * 32
        max_pixels = max(min(768 * 32 * 32, total_pixels / nframes * 2), int(min_pixels * 1.05))
        size = Official.smart_resize(height, width, 32, min_pixels, max_pixels)
        if size != (height, width):  # torchvision's F.resize on a uint8 tensor
            resized = torch.nn.functional.interpolate(
                video.to(torch.float32), size=list(size), mode="bicubic", align_corners=False, antialias=True
            )
            video = torch.round(resized.clamp(min=0, max=255)).to(torch.uint8)
        return video.float()

    # -- format_model_input / format_mm_content ----------------------------------------------------------------
    @staticmethod
    def is_video_input(video: Any) -> bool:
        from PIL import Image

        if isinstance(video, str):
            return True
        return isinstance(video, list) and len(video) > 0 and isinstance(video[0], Image.Image)

    @staticmethod
    def content(text: Any, image: Any, prefix: str | None = None, video: Any = None) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [] if prefix is None else [{"type": "text", "text": prefix}]
        texts = [] if text is None else [text] if isinstance(text, str) else text
        images = [] if image is None else image if isinstance(image, list) else [image]
        videos = [] if video is None else [video] if Official.is_video_input(video) else video
        if not texts and not images and not videos:
            content.append({"type": "text", "text": "NULL"})
            return content
        for frames in videos:
            if isinstance(frames, str):  # a file: sampled by fps and max_frames instead of total_pixels
                content.append({"type": "video", "video": "file://" + frames, "fps": 1, "max_frames": MAX_FRAMES})
                continue
            if len(frames) > MAX_FRAMES:  # sample_frames
                frames = [frames[i] for i in np.linspace(0, len(frames) - 1, MAX_FRAMES, dtype=int).tolist()]
            content.append({"type": "video", "video": frames, "total_pixels": MAX_TOTAL_PIXELS})
        for img in images:
            content.append({"type": "image", "image": img})
        for txt in texts:
            content.append({"type": "text", "text": txt})
        return content

    def embedding_conversation(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        instruction = item.get("instruction")
        if instruction:
            instruction = instruction.strip()
            if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
                instruction = instruction + "."
        return [
            {"role": "system", "content": [{"type": "text", "text": instruction or EMBED_DEFAULT}]},
            {"role": "user", "content": self.content(item.get("text"), item.get("image"), video=item.get("video"))},
        ]

    def rerank_conversation(self, query: dict[str, Any], doc: dict[str, Any], instruction: str | None) -> Any:
        contents = [{"type": "text", "text": "<Instruct>: " + (instruction or RERANK_DEFAULT)}]
        contents += self.content(query.get("text"), query.get("image"), "<Query>:", query.get("video"))
        contents += self.content(doc.get("text"), doc.get("image"), "\n<Document>:", doc.get("video"))
        return [
            {"role": "system", "content": [{"type": "text", "text": JUDGE}]},
            {"role": "user", "content": contents},
        ]

    # -- the processor ---------------------------------------------------------------------------------------
    def encode(self, conversation: list[dict[str, Any]], min_pixels: int, max_pixels: int) -> dict[str, Any]:
        """One conversation: ids (images expanded), pixel values and grids."""
        text = self.tokenizer.apply_chat_template(
            conversation, chat_template=self.template, tokenize=False, add_generation_prompt=True
        )
        images = [
            self.fetch_image(item["image"], min_pixels, max_pixels)
            for message in conversation
            for item in message["content"]
            if item.get("type") == "image"
        ]
        out: dict[str, Any] = {}
        if images:
            pixels = self.image_processor(images=images, do_resize=False, return_tensors="pt")
            out["pixel_values"] = pixels["pixel_values"]
            out["image_grid_thw"] = pixels["image_grid_thw"]
            for grid in pixels["image_grid_thw"]:
                text = text.replace("<|image_pad|>", "<|placeholder|>" * int(grid.prod() // 4), 1)
            text = text.replace("<|placeholder|>", "<|image_pad|>")
        videos = [item for message in conversation for item in message["content"] if item.get("type") == "video"]
        if videos:
            from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
            from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

            mean = torch.tensor(self.image_processor.image_mean).view(1, 3, 1, 1)
            std = torch.tensor(self.image_processor.image_std).view(1, 3, 1, 1)
            patches, grids = [], []
            for item in videos:
                if isinstance(item["video"], str):
                    decoded, video_fps = self.decoded[item["video"].removeprefix("file://")]
                    video, metadata = self.fetch_video_file(decoded, video_fps, item["fps"], item["max_frames"])
                else:
                    video, metadata = self.fetch_video(item["video"], item["total_pixels"])
                video = (video / 255.0 - mean) / std  # do_rescale, do_normalize; do_resize=False
                flat, grid_t, grid_h, grid_w = Qwen3VLVideoProcessor.patchify(
                    None, video[None], patch_size=16, merge_size=2, temporal_patch_size=2
                )
                patches.append(flat[0])
                grids.append([grid_t, grid_h, grid_w])
                times = Qwen3VLProcessor._calculate_timestamps(None, metadata["frames_indices"], metadata["fps"], 2)
                placeholder = "".join(
                    f"<{t:.1f} seconds><|vision_start|>"
                    + "<|vplaceholder|>" * (grid_h * grid_w // 4)
                    + "<|vision_end|>"
                    for t in times
                )
                text = text.replace("<|vision_start|><|video_pad|><|vision_end|>", placeholder, 1)
            text = text.replace("<|vplaceholder|>", "<|video_pad|>")
            out["pixel_values_videos"] = torch.cat(patches)
            out["video_grid_thw"] = torch.tensor(grids)
        out["ids"] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return out

    def forward(self, rows: list[dict[str, Any]], *, left: bool = False) -> torch.Tensor:
        """Padded forward pass of encoded rows; returns ``last_hidden_state`` and the attention mask."""
        width = max(len(row["ids"]) for row in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["ids"])
            where = slice(width - n, width) if left else slice(0, n)
            ids[i, where] = torch.tensor(row["ids"])
            mask[i, where] = 1
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        with_images = [row for row in rows if "pixel_values" in row]
        if with_images:
            inputs["pixel_values"] = torch.cat([row["pixel_values"] for row in with_images])
            inputs["image_grid_thw"] = torch.cat([row["image_grid_thw"] for row in with_images])
        with_videos = [row for row in rows if "pixel_values_videos" in row]
        if with_videos:
            inputs["pixel_values_videos"] = torch.cat([row["pixel_values_videos"] for row in with_videos])
            inputs["video_grid_thw"] = torch.cat([row["video_grid_thw"] for row in with_videos])
        if with_images or with_videos:
            config = self.model.config
            inputs["mm_token_type_ids"] = (ids == config.image_token_id).int() + 2 * (
                ids == config.video_token_id
            ).int()
        with torch.no_grad():
            return self.model(**inputs).last_hidden_state, mask

    # -- the official entry points ---------------------------------------------------------------------------
    def embed(self, inputs: list[dict[str, Any]], *, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
              dimensions: int | None = None) -> torch.Tensor:  # fmt: skip
        """``Qwen3VLEmbedder.process``: the whole list in one right-padded forward pass, last-token pooled."""
        rows = [self.encode(self.embedding_conversation(item), min_pixels, max_pixels) for item in inputs]
        hidden, mask = self.forward(rows)
        col = mask.shape[1] - mask.flip(dims=[1]).argmax(dim=1) - 1
        pooled = hidden[torch.arange(hidden.shape[0]), col]
        if dimensions is not None:
            pooled = pooled[:, :dimensions]
        return torch.nn.functional.normalize(pooled, p=2, dim=-1)

    def score(self, query: dict[str, Any], documents: list[dict[str, Any]], instruction: str | None = None, *,
              max_length: int = 10240) -> list[float]:  # fmt: skip
        """``Qwen3VLReranker.process``: one pair per forward pass, the official truncation, sigmoid of yes - no."""
        scores = []
        special = set(self.tokenizer.all_special_ids)
        for doc in documents:
            row = self.encode(self.rerank_conversation(query, doc, instruction), MIN_PIXELS, MAX_PIXELS)
            body, tail = row["ids"][:-5], row["ids"][-5:]
            if len(body) > max_length:
                keep = max_length - sum(1 for t in body if t in special)
                kept, count = [], 0
                for token in body:
                    if token in special:
                        kept.append(token)
                    elif count < keep:
                        kept.append(token)
                        count += 1
                body = kept
            row["ids"] = body + tail
            hidden, _ = self.forward([row], left=True)
            scores.append(torch.sigmoid(hidden[:, -1] @ self.score_weight).item())
        return scores
