"""Qwen3-VL-Embedding and Qwen3-VL-Reranker against an independent transcription of the official code.

The reference (:mod:`tests.vl_reference`) renders the official messages with transformers, cuts images with
transformers' own image processor and runs transformers' ``Qwen3VLModel``: the official embedder's whole list
in one padded pass, the official reranker's one pair per pass. Ours batches; the results must agree to 1e-5.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qwen3_retrieval import Qwen3VLEmbedder, Qwen3VLReranker
from qwen3_retrieval.testing import random_image as picture
from vl_reference import Official

TOL = 1e-5


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def official_embedder(vl_embedding: Path) -> Official:
    return Official(vl_embedding)


@pytest.fixture(scope="module")
def official_reranker(vl_reranker: Path) -> Official:
    return Official(vl_reranker, reranker=True)


@pytest.fixture(scope="module")
def official_video_embedder(vl_embedding: Path) -> Official:
    # The official code's own attention (transformers' default, SDPA): eager attention over a 64-frame clip holds
    # every layer's whole score matrix, gigabytes the comparison does not need.
    return Official(vl_embedding, attention=None)


def mixed_inputs() -> list[dict]:
    """Inputs covering every layout rule: order, lists, empty, instruction forms, image modes and sizes."""
    return [
        {"text": "A woman playing with her dog on a beach at sunset."},
        {"image": picture(150, 100, 0)},  # sides not multiples of 32
        {"text": "A cat.", "image": picture(64, 64, 1)},
        {"image": [picture(40, 200, 2), picture(90, 70, 3, "RGBA")], "text": ["two ", "texts"]},
        {"image": picture(7, 9, 4, "L")},  # below min_pixels: scaled up
        {"text": "with a question?", "instruction": "Find the matching photo?"},  # punctuation: no "."
        {"text": "plain", "instruction": "  Retrieve images or text relevant to the user's query  "},  # gets "."
        {"text": "cjk", "instruction": "查找相关图片。"},  # a CJK full stop is punctuation
        {"text": "blank", "instruction": "   "},  # falls back to the default
        {},  # empty: "NULL"
        {"text": ""},  # an empty text is a text, not "NULL"
    ]


def test_embeddings_match_the_official_code(vl_embedding: Path, official_embedder: Official) -> None:
    inputs = mixed_inputs()
    expected = official_embedder.embed(inputs).numpy()
    ours = Qwen3VLEmbedder(vl_embedding, batch_tokens=300).embed(inputs)  # several batches
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=TOL)
    # Not a test that cannot fail: the inputs give different vectors.
    assert min(np.linalg.norm(ours[i] - ours[j]) for i in range(len(ours)) for j in range(i)) > 1e-3


def frames(count: int, width: int, height: int, seed: int, mode: str = "RGB") -> list[Image.Image]:
    """A video as its frames: random ones, so a wrong sample, order, resize or timestamp moves the vectors."""
    return [picture(width, height, seed + i, mode) for i in range(count)]


def test_videos_match_the_official_code(vl_embedding: Path, official_video_embedder: Official) -> None:
    official_embedder = official_video_embedder
    inputs = [
        {"video": frames(3, 100, 80, 30)},  # odd: the last frame repeats; small: the clip is scaled up again
        {"video": frames(2, 384, 384, 40), "text": "a clip", "image": picture(64, 64, 50)},  # no second resize
        {"text": "two", "video": [frames(2, 64, 64, 60), frames(4, 200, 120, 70, "RGBA")]},  # two videos
        {"video": frames(66, 640, 448, 100)},  # over 64: sampled; 64 frames of that size: scaled down again
        {"text": "no video"},
    ]
    expected = official_embedder.embed(inputs).numpy()
    ours = Qwen3VLEmbedder(vl_embedding, batch_tokens=4000).embed(inputs)  # the long video runs alone
    np.testing.assert_allclose(ours, expected, atol=TOL)
    assert min(np.linalg.norm(ours[i] - ours[j]) for i in range(len(ours)) for j in range(i)) > 1e-3
    # A video is its frames: the same frames as images are another input.
    as_images = Qwen3VLEmbedder(vl_embedding).embed([{"image": frames(3, 100, 80, 30)}])
    assert np.linalg.norm(as_images[0] - ours[0]) > 1e-3


def test_reranker_scores_videos_as_the_official_code_does(vl_reranker: Path, official_reranker: Official) -> None:
    query = {"text": "a dog running on a beach"}
    documents = [{"video": frames(4, 96, 64, 200)}, {"text": "caption", "video": frames(3, 64, 64, 210)}, {"text": "x"}]
    expected = official_reranker.score(query, documents)
    np.testing.assert_allclose(Qwen3VLReranker(vl_reranker).score(query, documents), expected, atol=TOL)
    video_query = {"video": frames(2, 80, 80, 220)}
    expected = official_reranker.score(video_query, documents, "Find the same clip")
    ours = Qwen3VLReranker(vl_reranker).score(video_query, documents, "Find the same clip")
    np.testing.assert_allclose(ours, expected, atol=TOL)


def write_video(path: Path, arrays: list[np.ndarray], fps: int) -> Path:
    """A lossless FFV1 video file: any decoder reads back exactly ``arrays`` (written here, nothing committed)."""
    import av

    height, width = arrays[0].shape[:2]
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "bgr0"
        for array in arrays:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return path


def clip(count: int, width: int, height: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(count)]


def test_video_files_match_the_official_code(
    vl_embedding: Path, official_video_embedder: Official, tmp_path: Path
) -> None:
    official_embedder = official_video_embedder
    """Sampled at 1 frame per second (at least 4, at most 64, an even count), timed in the file's frame rate."""
    clips = {
        "short": (clip(30, 96, 64, 300), 10),  # 3 s: 4 frames, the least; scaled up
        "long": (clip(150, 64, 48, 400), 2),  # 75 s: 64 frames, the most
        "large": (clip(6, 900, 900, 500), 4),  # over 768 tokens a frame: scaled down
        "many": (clip(64, 576, 448, 600), 1),  # 64 frames of 252 tokens: within a file's total (not a frame list's)
    }
    paths = {}
    for name, (arrays, fps) in clips.items():
        path = write_video(tmp_path / f"{name}.mkv", arrays, fps)
        official_embedder.decoded[str(path)] = (np.stack(arrays), float(fps))
        paths[name] = str(path)
    inputs = [
        {"video": paths["short"]},
        {"video": paths["long"], "text": "a long clip"},
        {"video": [paths["large"], paths["short"]], "image": picture(64, 64, 1)},
        {"video": paths["many"]},
    ]
    expected = official_embedder.embed(inputs).numpy()
    # 8501 tokens for the last: over the official 8192, where the official code fails (its cut lands in the pads).
    ours = Qwen3VLEmbedder(vl_embedding, max_length=9000).embed(inputs)
    np.testing.assert_allclose(ours, expected, atol=TOL)
    assert min(np.linalg.norm(ours[i] - ours[j]) for i in range(len(ours)) for j in range(i)) > 1e-3
    as_bytes = Qwen3VLEmbedder(vl_embedding).embed([{"video": Path(paths["short"]).read_bytes()}])
    np.testing.assert_allclose(as_bytes[0], ours[0], atol=TOL)


def test_bad_video_files_give_one_line_errors(vl_embedding: Path, tmp_path: Path) -> None:
    embedder = Qwen3VLEmbedder(vl_embedding)
    good = write_video(tmp_path / "good.mkv", clip(12, 64, 64, 1), 4).read_bytes()
    (tmp_path / "noise.mkv").write_bytes(b"not a video at all" * 100)
    cases = [
        (tmp_path / "missing.mp4", r"cannot be opened as a video \(FileNotFoundError"),
        (tmp_path / "noise.mkv", r"cannot be opened as a video"),
        (good[:200], r"cannot be opened as a video"),  # cut inside its header
        (b"", r"cannot be opened as a video"),
        # Matroska names the codec by a string: an unknown one is a codec no FFmpeg decoder exists for.
        (good.replace(b"V_FFV1", b"V_QQQQ"), r"uses a codec this FFmpeg cannot decode; re-encode it"),
    ]
    for source, message in cases:
        with pytest.raises(ValueError, match=r"^inputs\[0\]\.video\[0\] " + message) as caught:
            embedder.embed([{"video": source}])
        assert "\n" not in str(caught.value)
    # Cut after some frames, a file is a shorter video (as players read it), not an error.
    assert embedder.embed([{"video": good[: len(good) // 2]}]).shape == (1, embedder.dimension)


def test_bad_videos_give_one_line_errors(vl_embedding: Path) -> None:
    embedder = Qwen3VLEmbedder(vl_embedding)
    with pytest.raises(ValueError, match=r"^inputs\[0\]\.video\[0\]\[1\] has another shape .*share one size$"):
        embedder.embed([{"video": [picture(64, 64, 1), picture(300, 64, 2)]}])
    with pytest.raises(ValueError, match=r"^inputs\[0\]\.video\[0\]\[0\] is not an image PIL can read"):
        embedder.embed([{"video": [b"not an image"]}])
    with pytest.raises(ValueError, match=r"^inputs\[0\]\.video has no frames"):
        embedder.embed([{"video": []}])
    with pytest.raises(TypeError, match=r"^inputs\[0\]\.video\[1\] is a int"):
        embedder.embed([{"video": [picture(64, 64, 1), 3]}])


def test_key_order_does_not_change_the_prompt(vl_embedding: Path) -> None:
    """The official code puts images before texts whatever the dict's key order (sentence-transformers does not)."""
    embedder = Qwen3VLEmbedder(vl_embedding)
    image = picture(96, 64, 5)
    a, b = embedder.embed([{"text": "x", "image": image}, {"image": image, "text": "x"}])
    np.testing.assert_array_equal(a, b)


def test_images_above_the_pixel_cap_are_resized_as_the_official_code_does(
    vl_embedding: Path, official_embedder: Official
) -> None:
    cap = 16 * 32 * 32  # 16 tokens: the large image takes the scale-down branch
    inputs = [{"image": picture(400, 300, 6)}, {"image": picture(33, 500, 7), "text": "tall"}]
    expected = official_embedder.embed(inputs, max_pixels=cap).numpy()
    ours = Qwen3VLEmbedder(vl_embedding, max_pixels=cap).embed(inputs)
    np.testing.assert_allclose(ours, expected, atol=TOL)


def test_matryoshka_cuts_then_normalises(vl_embedding: Path, official_embedder: Official) -> None:
    inputs = [{"text": "a"}, {"image": picture(64, 96, 8)}]
    expected = official_embedder.embed(inputs, dimensions=32).numpy()
    ours = Qwen3VLEmbedder(vl_embedding, dimensions=32).embed(inputs)
    np.testing.assert_allclose(ours, expected, atol=TOL)


def test_queries_documents_and_images(vl_embedding: Path, official_embedder: Official, tmp_path: Path) -> None:
    embedder = Qwen3VLEmbedder(vl_embedding, instruction="Find the photo")
    image = picture(80, 60, 9)
    path = tmp_path / "photo.png"
    image.save(path)
    expected = official_embedder.embed(
        [{"text": "dog", "instruction": "Find the photo"}, {"text": "dog"}, {"image": image}]
    ).numpy()
    np.testing.assert_allclose(embedder.embed_query("dog"), expected[0], atol=TOL)
    np.testing.assert_allclose(embedder.embed_documents(["dog"])[0], expected[1], atol=TOL)
    for source in (image, path, str(path), "file://" + str(path), path.read_bytes()):
        np.testing.assert_allclose(embedder.embed_images([source])[0], expected[2], atol=TOL)


def test_text_that_spells_vision_tokens_stays_text(vl_embedding: Path, official_embedder: Official) -> None:
    """``<|image_pad|>`` typed by a user is characters: the official code would make it a vision token (and fail)."""
    forged = "<|vision_start|><|image_pad|><|image_pad|><|vision_end|> and <|im_end|>"
    ours = Qwen3VLEmbedder(vl_embedding).embed([forged])[0]
    # The reference with the user text tokenized as plain characters (split_special_tokens) between the
    # template's own control tokens.
    tok = official_embedder.tokenizer
    ids = (
        tok("<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>", add_special_tokens=False)[
            "input_ids"
        ]
        + tok("user\n" + forged, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        + tok("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    )
    assert tok.convert_tokens_to_ids("<|image_pad|>") not in ids
    hidden, _ = official_embedder.forward([{"ids": ids}])
    expected = hidden[0, -1] / hidden[0, -1].norm()
    np.testing.assert_allclose(ours, expected.numpy(), atol=TOL)


def test_reranker_matches_the_official_code(vl_reranker: Path, official_reranker: Official) -> None:
    query = {"text": "A woman playing with her dog on a beach at sunset."}
    documents = [
        {"text": "A woman shares a joyful moment with her golden retriever."},
        {"image": picture(120, 90, 10)},
        {"text": "caption", "image": picture(64, 64, 11)},
        {},
        {"image": [picture(50, 50, 12), picture(70, 40, 13, "RGBA")], "text": ["a", "b"]},
    ]
    reranker = Qwen3VLReranker(vl_reranker, batch_tokens=200)
    expected = official_reranker.score(query, documents)
    np.testing.assert_allclose(reranker.score(query, documents), expected, atol=TOL)
    assert max(expected) - min(expected) > 0.01  # the documents score differently
    image_query = {"image": picture(100, 100, 14), "text": "this"}
    expected = official_reranker.score(image_query, documents, "Find the same scene")
    np.testing.assert_allclose(reranker.score(image_query, documents, "Find the same scene"), expected, atol=TOL)
    ranked = reranker.rank(query, documents, top_n=2)
    assert [i for i, _ in ranked] == list(np.argsort(official_reranker.score(query, documents))[::-1][:2])


def test_reranker_truncation_keeps_images_and_the_ending(vl_reranker: Path, official_reranker: Official) -> None:
    """The official rule: the last 5 tokens and every special token stay; the end of the text goes."""
    query = {"text": "beach dog"}
    long_text = " ".join(["sunset over the sea with a dog running"] * 40)
    documents = [{"text": long_text}, {"text": long_text, "image": picture(64, 64, 15)}, {"text": "short"}]
    expected = official_reranker.score(query, documents, max_length=80)
    ours = Qwen3VLReranker(vl_reranker, max_length=80).score(query, documents)
    np.testing.assert_allclose(ours, expected, atol=TOL)
    untruncated = official_reranker.score(query, documents[:1])
    assert abs(untruncated[0] - expected[0]) > 1e-4  # the cut changed the prompt


def test_over_long_embedding_input_keeps_its_template(vl_embedding: Path, official_embedder: Official) -> None:
    """Ours cuts the text and keeps ``assistant\\n`` (the pooled token); it equals the official code on the cut text."""
    embedder = Qwen3VLEmbedder(vl_embedding, max_length=60)
    long_text = " ".join(["waves"] * 200)
    ours = embedder.embed([long_text])[0]
    tok = official_embedder.tokenizer
    whole = official_embedder.encode(official_embedder.embedding_conversation({"text": long_text}), 1, 1)["ids"]
    tail = tok("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    cut = whole[: 60 - len(tail)] + tail
    hidden, _ = official_embedder.forward([{"ids": cut}])
    np.testing.assert_allclose(ours, (hidden[0, -1] / hidden[0, -1].norm()).numpy(), atol=TOL)
    with pytest.raises(ValueError, match="max_length=60"):
        embedder.embed([{"image": picture(256, 256, 16)}])  # 64 image tokens cannot fit


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns on opening; we refuse
@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("missing.png", "cannot be opened"),
        (b"not an image at all", "not an image PIL can read"),
        (b"", "empty bytes"),
        ("https://example.com/a.png", "fetching URLs is off"),
        ("truncated", "cannot be decoded"),
        ("empty-file", "empty file"),
        ("bomb", "more than the 100,000,000 pixels"),
        ("sliver", "aspect ratio"),
        (3.5, "pass a PIL image"),
    ],
)
def test_bad_images_give_one_line_errors(vl_embedding: Path, tmp_path: Path, source: object, message: str) -> None:
    if source == "truncated":
        source = png_bytes(picture(64, 64, 17))[:300]
    elif source == "empty-file":
        (tmp_path / "empty.png").write_bytes(b"")
        source = str(tmp_path / "empty.png")
    elif source == "bomb":
        source = png_bytes(Image.new("1", (12000, 9000)))  # 108 million pixels in a few kilobytes
    elif source == "sliver":
        source = picture(1, 300, 18)
    elif source == "missing.png":
        source = str(tmp_path / "missing.png")
    embedder = Qwen3VLEmbedder(vl_embedding)
    good = {"text": "fine", "image": picture(32, 32, 19)}
    with pytest.raises((ValueError, TypeError), match=message) as caught:
        embedder.embed([good, good, {"image": [picture(32, 32, 20), source]}])
    assert "inputs[2].image[1]" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert embedder.embed([good]).shape == (1, 64)  # the model still serves


def test_inputs_are_checked_before_anything_loads(tmp_path: Path) -> None:
    embedder = Qwen3VLEmbedder(tmp_path)  # an empty folder: any load would fail
    assert embedder.embed([]).shape == (0, 0)
    with pytest.raises(TypeError, match="unknown key 'images'"):
        embedder.embed([{"images": []}])
    with pytest.raises(ValueError, match=r"^inputs\[0\]\.video is a URL; video files are read from disk or bytes"):
        embedder.embed([{"video": "https://example.com/clip.mp4"}])
    with pytest.raises(TypeError, match="must be a list"):
        embedder.embed("a single text")
    with pytest.raises(ValueError, match="query is empty"):
        Qwen3VLReranker(tmp_path).score({"text": "  "}, ["doc"])
    with pytest.raises(ValueError, match="engine='vllm': the Qwen3-VL models run in process"):
        Qwen3VLEmbedder(tmp_path, engine="vllm")
    with pytest.raises(ValueError, match="max_pixels must be at least"):
        Qwen3VLEmbedder(tmp_path, min_pixels=8192, max_pixels=4096)


def test_a_text_checkpoint_is_refused_with_a_hint(tmp_path: Path) -> None:
    from qwen3_retrieval.testing import make_embedding_checkpoint

    folder = make_embedding_checkpoint(tmp_path / "text")
    with pytest.raises(ValueError, match="not a Qwen3-VL one"):
        Qwen3VLEmbedder(folder).embed(["x"])


def test_concurrent_callers_get_what_one_caller_gets(vl_embedding: Path) -> None:
    embedder = Qwen3VLEmbedder(vl_embedding)
    batches = [[{"text": f"text {i}", "image": picture(32 + 16 * i, 48, 30 + i)}, f"plain {i}"] for i in range(6)]
    alone = [embedder.embed(batch) for batch in batches]
    results: list[np.ndarray | None] = [None] * len(batches)

    def call(i: int) -> None:
        results[i] = embedder.embed(batches[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, alone):
        np.testing.assert_allclose(got, want, atol=TOL)


@pytest.mark.parametrize("wait", [2.0, None])
def test_concurrent_calls_are_merged_into_shared_batches(vl_embedding: Path, wait: float | None) -> None:
    """As for the text models: calls that arrive while the model is busy run together (unless batch_wait_ms=None)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    embedder = Qwen3VLEmbedder(vl_embedding, batch_wait_ms=wait)
    inputs = [{"text": f"query {i}", "image": picture(32, 32, 60 + i)} for i in range(8)]
    alone = [embedder.embed([item])[0] for item in inputs]
    assert embedder.loaded is not None
    passes: list[int] = []

    def slow(module: object, args: object, kwargs: dict, output: object) -> None:
        passes.append(kwargs["input_ids"].shape[0])
        time.sleep(0.3)  # the first call holds the model while the others queue

    hook = embedder.loaded.engine.model.register_forward_hook(slow, with_kwargs=True)
    try:
        with ThreadPoolExecutor(len(inputs)) as pool:
            got = list(pool.map(lambda item: embedder.embed([item])[0], inputs))
    finally:
        hook.remove()
    np.testing.assert_allclose(np.stack(got), np.stack(alone), atol=TOL)
    if wait is None:
        assert passes == [1] * len(inputs)  # each call alone
    else:
        assert len(passes) < len(inputs) and sum(passes) == len(inputs) and max(passes) > 1, passes


async def test_async_calls_equal_the_sync_ones(vl_embedding: Path, vl_reranker: Path) -> None:
    inputs = mixed_inputs()
    for wait_ms in (2.0, None):  # merged with other calls, and alone
        embedder = Qwen3VLEmbedder(vl_embedding, batch_wait_ms=wait_ms)
        np.testing.assert_allclose(await embedder.aembed(inputs), embedder.embed(inputs), atol=1e-6)
    reranker = Qwen3VLReranker(vl_reranker)
    query, documents = {"text": "a dog on a beach"}, [{"text": "a dog"}, {"image": picture(80, 60, 15)}, {}]
    np.testing.assert_allclose(await reranker.ascore(query, documents), reranker.score(query, documents), atol=1e-6)
    assert await reranker.arank(query, documents, top_n=2) == reranker.rank(query, documents, top_n=2)
    assert await reranker.ascore(query, []) == []
    with pytest.raises(ValueError, match="query is empty"):
        await reranker.ascore({"text": " "}, documents)
