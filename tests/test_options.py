"""The options records: the one list of options, checked and resolved once, dumped and rebuilt exactly, and the
source of both frameworks' fields."""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from qwen3_retrieval import Qwen3Embedder, Qwen3Reranker
from qwen3_retrieval.batching import BatchPolicy
from qwen3_retrieval.options import EmbedderOptions, RerankerOptions

# A value for every option, none of them its default: a field that a dump drops or a rebuild resets shows up.
NON_DEFAULTS: dict[str, Any] = {
    "model": "org/some-embedding",
    "device": "cpu",
    "dtype": "bfloat16",
    "instruction": "Find facts",
    "max_length": 512,
    "batch_tokens": 256,
    "batch_wait_ms": 7.5,
    "batch_policy": BatchPolicy(batch_tokens=99, max_padding=0.5, layout="right", share_prefix=False),
    "show_progress": True,
    "attn_implementation": "sdpa",
    "compile": False,
    "engine": "http",
    "base_url": "http://ann:pw-secret@127.0.0.1:9/v1",
    "api_key": None,  # a key and a URL password cannot travel together; the key is tested on its own below
    "timeout": 3.5,
    "served_model_name": "emb-prod",
    "max_concurrency": 9,
    "max_batch": 5,
    "engine_options": {"enforce_eager": True},
    "dimensions": 64,
    "normalize": False,
}


def options_with(cls: type, **changes: Any) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in {**NON_DEFAULTS, **changes}.items() if k in names})


def test_the_non_defaults_cover_every_option_and_differ_from_the_defaults() -> None:
    for cls in (EmbedderOptions, RerankerOptions):
        for option in dataclasses.fields(cls):
            assert option.name in NON_DEFAULTS, f"add {option.name} to NON_DEFAULTS"
            if option.name != "api_key":
                assert NON_DEFAULTS[option.name] != option.default, option.name


@pytest.mark.parametrize("cls", [EmbedderOptions, RerankerOptions])
def test_every_option_round_trips_through_a_dump(cls: type) -> None:
    original = options_with(cls)
    rebuilt = cls(**original.dump(secrets=True))
    for option in dataclasses.fields(cls):
        assert getattr(rebuilt, option.name) == getattr(original, option.name), option.name
    assert rebuilt == original
    keyed = options_with(cls, base_url="http://127.0.0.1:9/v1", api_key="sk-options-secret")
    assert cls(**keyed.dump(secrets=True)).api_key == "sk-options-secret"


@pytest.mark.parametrize("cls", [EmbedderOptions, RerankerOptions])
def test_dumps_reprs_and_pickles_carry_no_secret(cls: type) -> None:
    options = options_with(cls)
    keyed = options_with(cls, base_url="http://127.0.0.1:9/v1", api_key="sk-options-secret")
    for shown in (repr(options), repr(keyed), str(options.dump()), str(keyed.dump())):
        assert "pw-secret" not in shown and "sk-options-secret" not in shown
    assert "***@127.0.0.1" in repr(options)
    assert pickle.loads(pickle.dumps(keyed)).api_key is None
    assert "pw-secret" not in str(pickle.loads(pickle.dumps(options)).base_url)


def test_none_is_resolved_once_to_what_runs_here() -> None:
    options = EmbedderOptions("org/m", device=torch.device("cpu"), dtype=torch.float32, batch_tokens=300)
    assert (options.device, options.dtype, options.engine) == ("cpu", "float32", "transformers")
    assert options.batch_policy is not None and options.batch_policy.batch_tokens == 300
    assert EmbedderOptions("org/m", device="cpu", batch_wait_ms=None).policy.micro_batch is False
    assert EmbedderOptions("org/m", device="cpu", attn_implementation="sdpa").policy.layout == "right"
    assert EmbedderOptions("org/m", base_url="http://127.0.0.1:9/v1").engine == "http"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"max_length": 1}, r"max_length must be at least 2"),
        ({"dimensions": 8}, r"dimensions must be at least 32"),
        ({"dtype": "int8"}, r"unknown dtype 'int8'"),
        ({"device": "tpu"}, r"device"),
        ({"engine": "onnx"}, r"unknown engine 'onnx'"),
        ({"engine": "http"}, r"pass its base_url"),
        ({"timeout": 0}, r"timeout"),
        ({"max_concurrency": 0}, r"max_concurrency must be at least 1"),
        ({"served_model_name": ""}, r"served_model_name must be a non-empty string"),
        ({"batch_wait_ms": -1}, r"batch_wait_ms"),
        ({"base_url": "127.0.0.1:8000"}, r"base_url"),
        ({"base_url": "http://a:pw@127.0.0.1:9/v1", "api_key": "k"}, r"one Authorization header cannot carry both"),
        ({"model": "./no/such/folder"}, r"does not exist"),
    ],
)
def test_bad_values_are_refused_when_the_record_is_built(changes: dict[str, Any], error: str) -> None:
    values = {"model": "org/m", "device": "cpu", **changes}
    with pytest.raises(ValueError, match=error):
        EmbedderOptions(**values)


def test_the_core_classes_take_exactly_these_options(embedding_path: Path) -> None:
    with pytest.raises(TypeError, match=r"unknown option 'dimension'.*EmbedderOptions"):
        Qwen3Embedder(embedding_path, dimension=64)
    with pytest.raises(TypeError, match=r"unknown option 'dimensions'.*RerankerOptions"):
        Qwen3Reranker("org/m", dimensions=64)
    core = Qwen3Embedder(embedding_path, device="cpu", dimensions=48, batch_wait_ms=None)
    assert core.options == EmbedderOptions(embedding_path, device="cpu", dimensions=48, batch_wait_ms=None)
    assert Qwen3Embedder.from_options(core.options).embed_query("x").shape == (48,)


def framework_classes() -> list[tuple[type, type]]:
    from qwen3_retrieval import langchain, llama_index

    return [
        (langchain.Qwen3Embeddings, EmbedderOptions),
        (llama_index.Qwen3Embedding, EmbedderOptions),
        (langchain.Qwen3Rerank, RerankerOptions),
        (llama_index.Qwen3Rerank, RerankerOptions),
    ]


@pytest.mark.parametrize("index", range(4))
def test_every_option_is_a_documented_field_in_both_frameworks(index: int) -> None:
    component, options = framework_classes()[index]
    model_field = (
        "model_name" if "model_name" in component.model_fields and "model" not in component.model_fields else "model"
    )
    for name, doc in options.docs().items():
        field = component.model_fields[model_field if name == "model" else name]
        assert name == "model" or field.description == doc, (component, name)
        assert doc.strip(), name


def test_a_component_dump_rebuilds_every_option_of_a_passed_core(embedding_path: Path) -> None:
    from qwen3_retrieval.langchain import Qwen3Embeddings

    policy = BatchPolicy(batch_tokens=77, max_padding=1.0, layout="packed")
    core = Qwen3Embedder(
        embedding_path, device="cpu", dimensions=40, max_length=30, batch_policy=policy, batch_wait_ms=None,
        attn_implementation=None, timeout=9.0, show_progress=False, instruction="Find facts",
    )  # fmt: skip
    rebuilt = Qwen3Embeddings(**Qwen3Embeddings(embedder=core).model_dump())
    assert rebuilt.embedder is not None and rebuilt.embedder is not core
    assert rebuilt.embedder.options == core.options


# --- the tests use the public API -------------------------------------------------------------------------------

# Each allowed "._name" in the tests, and why it is not private access to the package.
ALLOWED = {
    "os._exit": "the standard library's exit for a forked child, public despite its name",
    "self._": "a test's own helper class (fake servers) calling its own methods",
    "torch.ops.mkldnn._": "torch's oneDNN operators, named so by torch (the benchmark's GEMM probe)",
    "torch._inductor": "torch's AOTInductor package loader, named so by torch (the compile "
    "tests load the cache's packages with it, and mark the compiled path through it)",
    "torch.cpu._is_amx_tile_supported": "torch's own AMX check, named so by torch (the cache key's reference)",
    "Qwen3VLProcessor._calculate_timestamps": "transformers' own video timing, which the official reference calls "
    "instead of transcribing it (transformers', not ours)",
}


def test_tests_and_the_benchmark_touch_no_private_state() -> None:
    root = Path(__file__).resolve().parent.parent
    found = []
    for folder in ("tests", "integration_tests", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                for match in re.finditer(r"[\w.)\]]*[.]_(?!_)\w*", code):
                    if not any(match.group().startswith(allowed) for allowed in ALLOWED):
                        found.append(f"{path.relative_to(root)}:{number}: {match.group()}")
    assert not found, "private access (use the public API, or allow it with a reason):\n" + "\n".join(found)
