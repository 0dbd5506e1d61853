"""Qwen3-VL prompts as chat messages: the only form in which a vLLM server takes images.

vLLM takes token ids on ``/v1/embeddings`` and ``/classify``, but images only inside chat messages, which it
renders with the model's chat template and tokenizes with control tokens recognised. So for a server, each
prompt's exact ids (built, cut and checked by :mod:`qwen3_retrieval.vl.processors`, as for every engine) are read
back into the messages that render to them, and the read-back is checked rather than trusted:

* Each run of text between two control tokens must tokenize, control tokens recognised, to the very ids it was
  read from. A text that spells a control token (``<|im_end|>``, ``<|image_pad|>``) would become that token on
  the server, and a cut that ends inside a character would come back as other characters. Both are refused
  with a ``ValueError``, never sent as a prompt other than the one computed here.
* Each image is sent resized the official way, as lossless PNG (:meth:`~qwen3_retrieval.vl.media.SizedImage.png`),
  and no per-request kwargs: a resized image is the fixed point of the server's own resize when its pixel
  count lies within the server's bounds, so it is cut into the same patches, and its ``<|image_pad|>`` run has
  the same length (which the engine checks against the server's token count).
* Each video is sent as its frames, sampled and resized the official way, as lossless PNG in one
  ``data:video/jpeg;base64,<frame>,<frame>,...`` URL (vLLM's form for a list of frames; it opens each frame as an
  image, whatever its format), with its frame rate and frame indices as the request's ``media_io_kwargs``, so the
  server writes the same ``<t seconds>`` before each pair of frames. vLLM tokenizes each timestamp on its own;
  the prompt's ids must hold them so, else the prompt is refused.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from typing import Any

from qwen3_retrieval.tokenization import TextTokenizer
from qwen3_retrieval.vl.media import SizedImage
from qwen3_retrieval.vl.processors import VLSequence
from qwen3_retrieval.vl.prompts import IM_END, IM_START, IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START
from qwen3_retrieval.vl.video import SizedVideo


@dataclass(frozen=True, eq=False)
class ChatPrompt:
    """One prompt as chat messages: the system text, then the user turn's texts and images in order.

    The template ends every such prompt with ``<|im_start|>assistant\\n``: it is sent as
    ``add_generation_prompt``.
    """

    system: str
    content: tuple[str | SizedImage | SizedVideo, ...]

    def messages(self) -> list[dict[str, Any]]:
        """Return the OpenAI-style messages; reads each image again (call it when the request is sent)."""
        content = [_part(part) for part in self.content]
        return [{"role": "system", "content": self.system}, {"role": "user", "content": content}]

    def media_io_kwargs(self) -> dict[str, Any]:
        """The request's ``media_io_kwargs``: how the server times its videos' frames (empty if none).

        They are per request, not per video, so a prompt's videos must share them (checked by the reader).
        """
        videos = [part for part in self.content if isinstance(part, SizedVideo)]
        return {"video": _video_kwargs(videos[0])} if videos else {}

    def pixel_bounds(self) -> dict[str, int]:
        """The pixel bounds the images were resized within, as ``--mm-processor-kwargs`` names them (empty if none)."""
        images = [part for part in self.content if isinstance(part, SizedImage)]
        if not images:
            return {}
        return {"min_pixels": images[0].settings.min_pixels, "max_pixels": images[0].settings.max_pixels}


class ChatReader:
    """Reads a Qwen3-VL prompt's ids back into a :class:`ChatPrompt`, checking the server will see those ids.

    Args:
        tokenizer: The checkpoint's tokenizer.
    """

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer
        self.special = set(tokenizer.special_ids())
        self.ids = {token: tokenizer.token_id(token) for token in (IM_START, IM_END, VISION_START, VISION_END)}
        self.pad = tokenizer.token_id(IMAGE_PAD)
        self.video_pad = tokenizer.token_id(VIDEO_PAD)

    def read(self, sequence: VLSequence, what: str) -> ChatPrompt:
        """Return ``sequence`` as chat messages.

        Raises:
            ValueError: Its text spells a control token, or was cut inside a character, or the cut reached the
                template (``what`` names the input, the message the fix).
        """
        if len({json.dumps(_video_kwargs(video)) for video in sequence.videos}) > 1:
            raise ValueError(
                f"{what} has videos timed differently (files of other frame rates, or a file and frames), which a "
                "server takes one way per request; give each its own input, or drop base_url="
            )
        pieces = self._pieces(sequence, what)
        start, end = self.ids[IM_START], self.ids[IM_END]
        head, tail = pieces[:6], pieces[-4:]
        user = head[5] if len(head) == 6 else None
        if (
            len(pieces) < 10
            or head[:5] != [start, head[1], end, "\n", start]
            or not (isinstance(head[1], str) and head[1].startswith("system\n"))
            or not (isinstance(user, str) and user.startswith("user\n"))
            or tail != [end, "\n", start, "assistant\n"]
        ):
            raise ValueError(
                f"{what}: its prompt was cut into the template to fit max_length, and a server renders the "
                "template whole; raise max_length"
            )
        assert isinstance(head[1], str) and isinstance(user, str)
        first = [user.removeprefix("user\n")] if user != "user\n" else []
        content = [*first, *pieces[6:-4]]
        if any(isinstance(part, int) for part in content):
            raise ValueError(f"{what}: its prompt has a control token inside the user turn; it cannot be sent")
        return ChatPrompt(head[1].removeprefix("system\n"), tuple(content))  # type: ignore[arg-type]

    def _pieces(self, sequence: VLSequence, what: str) -> list[int | str | SizedImage | SizedVideo]:
        """Split the ids into control tokens, checked texts, images and videos."""
        pieces: list[int | str | SizedImage | SizedVideo] = []
        images, videos = iter(sequence.images), iter(sequence.videos)
        run: list[int] = []
        ids = sequence.ids
        i = 0
        while i < len(ids):
            token = ids[i]
            if token not in self.special:
                run.append(token)
                i += 1
                continue
            if token == self.ids[VISION_START] and i + 1 < len(ids) and ids[i + 1] == self.video_pad:
                video = next(videos)
                i = self._video(ids, i, run, video, what)
                if run:
                    pieces.append(self._text(run, what))
                    run = []
                pieces.append(video)
                continue
            if run:
                pieces.append(self._text(run, what))
                run = []
            if token == self.ids[VISION_START]:
                image = next(images)
                stop = i + 1 + image.tokens
                assert ids[i + 1 : stop] == [self.pad] * image.tokens and ids[stop] == self.ids[VISION_END]
                pieces.append(image)
                i = stop + 1
            else:
                pieces.append(token)
                i += 1
        if run:
            pieces.append(self._text(run, what))
        return pieces

    def _video(self, ids: list[int], i: int, run: list[int], video: SizedVideo, what: str) -> int:
        """Check the video's pairs of frames from ``ids[i]`` on; return the index after the video.

        The server writes each pair's timestamp itself, tokenized alone: the first is taken off the end of
        ``run`` (the text before the video), each later one must be all that stands between two pairs.
        """
        before = run
        for pair, stamp in enumerate(video.timestamps()):
            stamp_ids = self.tokenizer.template(stamp)
            if before[len(before) - len(stamp_ids) :] != stamp_ids or (pair and len(before) != len(stamp_ids)):
                raise ValueError(
                    f"{what}: the text before its video's frames {pair * 2} and {pair * 2 + 1} is not {stamp} "
                    "tokenized alone, as a server writes it; use the in-process engine (no base_url)"
                )
            del before[len(before) - len(stamp_ids) :]
            stop = i + 1 + video.pair_tokens
            assert ids[i] == self.ids[VISION_START] and ids[i + 1 : stop] == [self.video_pad] * video.pair_tokens
            assert ids[stop] == self.ids[VISION_END]
            i, before = stop + 1, []
            while pair + 1 < video.grid[0] and i < len(ids) and ids[i] not in self.special:
                before.append(ids[i])
                i += 1
        return i

    def _text(self, run: list[int], what: str) -> str:
        text = self.tokenizer.decode(run)
        served = self.tokenizer.template(text)
        if served == run:
            return text
        if any(token in self.special for token in served):
            raise ValueError(
                f"{what}: its text spells a control token (such as <|im_end|> or <|image_pad|>), which a vLLM server "
                "would read as one: servers take images only inside chat messages, whose text they tokenize with "
                "control tokens recognised; remove it, or use the in-process engine (no base_url), which reads it "
                "as plain text"
            )
        raise ValueError(
            f"{what}: its text was cut to fit max_length inside a character, which cannot be sent to a server "
            "exactly; shorten the text or raise max_length"
        )


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _part(part: str | SizedImage | SizedVideo) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if isinstance(part, SizedImage):
        return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _base64(part.png())}}
    frames = ",".join(_base64(_png(frame)) for frame in part.clip())
    return {"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + frames}}


def _png(frame: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame.permute(1, 2, 0).contiguous().numpy(), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _video_kwargs(video: SizedVideo) -> dict[str, Any]:
    """How vLLM's frame loader times a video: all frames sent, their rate and, for a file, the taken indices.

    vLLM numbers frames sent without indices 0, 1, 2..., as the official code numbers a list of frames.
    """
    fps, indices, total = video.times()
    timing: dict[str, Any] = {"fps": fps, "num_frames": -1}
    if indices != list(range(total)):
        timing.update(frames_indices=indices, total_num_frames=total)
    return timing
