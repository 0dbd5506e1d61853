"""The Qwen3-VL models on a vLLM server: the same prompts as in process, sent as chat messages.

A server takes images only inside chat messages (see :mod:`qwen3_retrieval.vl.messages`), one conversation per
request: each prompt is read back into its messages and checked before anything is sent, and its images are
encoded when its request goes out, so no more than ``max_concurrency`` prompts' images are held at once.

* Embedding: ``/v1/embeddings`` with ``messages``, ``add_generation_prompt: true`` (vLLM's default is now
  false, and the vector is pooled on the generation prompt's last token) and ``use_activation: false`` (the
  raw state: the core cuts and normalises it).
* Reranking: ``/classify`` with ``messages`` on a server started with docs/qwen3-vl.md's ``--hf-overrides``, which
  turn the LM head's yes/no rows into one label scored ``sigmoid((W_yes - W_no) . h)``.

Images are sent already resized the official way, and no per-request ``mm_processor_kwargs`` (a vLLM server
refuses them unless started with ``--trust-request-mm-kwargs``): the server's own resize, within its pixel bounds
(the checkpoint's ``preprocessor_config.json`` or its ``--mm-processor-kwargs``), leaves an image that already lies
within them as it is. Whether it did is checked, not assumed: the prompt length the server reports must be the
one built here (an image resized otherwise has another number of ``<|image_pad|>`` tokens), else a ``ValueError``
names the server flag that fixes it.

Retries, deadlines, answer checks and secret masking are :class:`~qwen3_retrieval.engines.vllm_http.VLLMServer`'s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from qwen3_retrieval.batching import BatchPolicy
from qwen3_retrieval.engines import finish_progress
from qwen3_retrieval.engines.vllm_http import ChatBody, VLLMServer, run_sync, server_for
from qwen3_retrieval.options import VisionOptions
from qwen3_retrieval.tokenization import TextTokenizer
from qwen3_retrieval.vl.messages import ChatPrompt, ChatReader
from qwen3_retrieval.vl.processors import VLSequence


class HttpVL:
    """Runs Qwen3-VL prompts on a vLLM server; the in-process engine's interface.

    Args:
        server: The server's client.
        reader: Reads prompts back into chat messages.
        width: The model's hidden size (a vector of another length is a bad answer).
    """

    def __init__(self, server: VLLMServer, reader: ChatReader, width: int) -> None:
        self.server, self.reader, self.width = server, reader, width

    def embed(self, sequences: Sequence[VLSequence], policy: BatchPolicy, progress: tqdm | None) -> torch.Tensor:
        """Return an ``(n, hidden)`` tensor of the server's raw pooled states, rows in input order.

        Raises:
            ValueError: A prompt cannot be sent exactly (see :class:`~qwen3_retrieval.vl.messages.ChatReader`).
        """
        rows = run_sync(lambda: self.aembed(sequences, policy))
        finish_progress(progress, len(rows))
        return rows

    async def aembed(self, sequences: Sequence[VLSequence], policy: BatchPolicy) -> torch.Tensor:
        """Async :meth:`embed`."""
        bodies, fix = self._bodies(sequences, "inputs", {"use_activation": False})
        return torch.tensor(await self.server.aembed_chats(bodies, self.width, fix), dtype=torch.float32)

    def score(self, sequences: Sequence[VLSequence], policy: BatchPolicy, progress: tqdm | None) -> list[float]:
        """Return each pair's P(yes) as the server's reranker scores it, in input order."""
        scores = run_sync(lambda: self.ascore(sequences, policy))
        finish_progress(progress, len(scores))
        return scores

    async def ascore(self, sequences: Sequence[VLSequence], policy: BatchPolicy) -> list[float]:
        """Async :meth:`score`."""
        bodies, fix = self._bodies(sequences, "the pair of the query and documents", {})
        return await self.server.aclassify_chats(bodies, fix)

    def _bodies(self, sequences: Sequence[VLSequence], what: str, extra: dict[str, Any]) -> tuple[list[ChatBody], str]:
        """Each prompt's request body with its length, and the fix for a server that resized its images."""
        # Every prompt is checked before the first request goes out: a refused one sends nothing.
        prompts = [self.reader.read(sequence, f"{what}[{i}]") for i, sequence in enumerate(sequences)]
        bounds = next((prompt.pixel_bounds() for prompt in prompts if prompt.pixel_bounds()), None)
        fix = ""
        if bounds is not None:
            fix = (
                "; the server resized an image within other pixel bounds than this model's min_pixels="
                f"{bounds['min_pixels']} and max_pixels={bounds['max_pixels']}: start it with --mm-processor-kwargs "
                f"'{json.dumps(bounds)}', or set min_pixels= and max_pixels= to the server's bounds"
            )
        return [(_body(prompt, extra), len(sequence.ids)) for prompt, sequence in zip(prompts, sequences)], fix


VIDEO_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string -%}{{ message.content }}"
    "{%- else -%}{%- for item in message.content -%}"
    "{%- if item.type == 'image' or item.type == 'image_url' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item.type == 'video' or item.type == 'video_url' -%}{{ '<|video_pad|>' }}"
    "{%- elif 'text' in item -%}{{ item.text }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def _body(prompt: ChatPrompt, extra: dict[str, Any]) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def make() -> dict[str, Any]:
        # Reading and encoding images blocks: off the event loop, which keeps the other requests moving.
        messages = await asyncio.to_thread(prompt.messages)
        body = {"messages": messages, "add_generation_prompt": True, **extra}
        media = prompt.media_io_kwargs()
        if media:
            body["media_io_kwargs"] = media
            body["chat_template"] = VIDEO_TEMPLATE
        return body

    return make


def load_vl(options: VisionOptions, tokenizer: TextTokenizer, config: Any, reranker: bool) -> HttpVL:
    """Reach a server running a Qwen3-VL model; no weights are loaded here."""
    return HttpVL(server_for(options), ChatReader(tokenizer), config.text_config.hidden_size)
