"""An independent transcription of the official Qwen3-VL-Embedding / Qwen3-VL-Reranker code, for the tests.

Written from QwenLM/Qwen3-VL-Embedding ``src/models/qwen3_vl_embedding.py`` and ``qwen3_vl_reranker.py`` (commit
8ce3aab) and qwen-vl-utils' ``fetch_image``, not from our package: messages are built as the official code
builds them, rendered by transformers' chat templating with the checkpoint's template, tokenized by
transformers' tokenizer, images resized by PIL and cut by transformers' own ``Qwen2VLImageProcessorPil``, and
run through transformers' ``Qwen3VLModel``. Only two steps of the official processor are transcribed, because
its class needs torchvision, which the CPU test environment does not have: each ``<|image_pad|>`` is expanded to
``grid.prod() // merge**2`` copies, and ``mm_token_type_ids`` marks image tokens with 1.
"""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path
from typing import Any

import torch

MIN_PIXELS = 4 * 32 * 32
MAX_PIXELS = 1800 * 32 * 32
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
    def fetch_image(image: Any, min_pixels: int, max_pixels: int) -> Any:
        from PIL import Image

        if image.mode == "RGBA":
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image, mask=image.split()[3])
            image = background
        else:
            image = image.convert("RGB")
        width, height = image.size
        h_bar = max(32, round(height / 32) * 32)
        w_bar = max(32, round(width / 32) * 32)
        if h_bar * w_bar > max_pixels:
            beta = math.sqrt((height * width) / max_pixels)
            h_bar = max(32, math.floor(height / beta / 32) * 32)
            w_bar = max(32, math.floor(width / beta / 32) * 32)
        elif h_bar * w_bar < min_pixels:
            beta = math.sqrt(min_pixels / (height * width))
            h_bar = math.ceil(height * beta / 32) * 32
            w_bar = math.ceil(width * beta / 32) * 32
        return image.resize((w_bar, h_bar))

    # -- format_model_input / format_mm_content ----------------------------------------------------------------
    @staticmethod
    def content(text: Any, image: Any, prefix: str | None = None) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [] if prefix is None else [{"type": "text", "text": prefix}]
        texts = [] if text is None else [text] if isinstance(text, str) else text
        images = [] if image is None else image if isinstance(image, list) else [image]
        if not texts and not images:
            content.append({"type": "text", "text": "NULL"})
            return content
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
            {"role": "user", "content": self.content(item.get("text"), item.get("image"))},
        ]

    def rerank_conversation(self, query: dict[str, Any], doc: dict[str, Any], instruction: str | None) -> Any:
        contents = [{"type": "text", "text": "<Instruct>: " + (instruction or RERANK_DEFAULT)}]
        contents += self.content(query.get("text"), query.get("image"), prefix="<Query>:")
        contents += self.content(doc.get("text"), doc.get("image"), prefix="\n<Document>:")
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
            inputs["mm_token_type_ids"] = (ids == self.model.config.image_token_id).int()
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
