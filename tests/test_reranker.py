"""Qwen3Reranker against the model card's code: full logits at the last position, 2-way softmax over no/yes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from policies import POLICIES
from qwen3_retrieval import Qwen3Reranker
from qwen3_retrieval.loading import cached_keys
from texts import DOCUMENTS

TOL = 1e-5
QUERY = "What is the capital of China?"
CARD_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
CARD_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def card_body(instruction: str, query: str, doc: str, sep: str = "\n") -> str:
    return f"<Instruct>: {instruction}{sep}<Query>: {query}{sep}<Document>: {doc}"


class ModelCard:
    """The model card's transformers recipe, kept as close to the card as possible."""

    def __init__(self, path: Path, max_length: int = 8192) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.max_length = max_length
        self.prefix_tokens = self.tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)
        self.yes = self.tokenizer.convert_tokens_to_ids("yes")
        self.no = self.tokenizer.convert_tokens_to_ids("no")

    def input_ids(self, pairs: list[str]) -> list[list[int]]:
        inputs = self.tokenizer(
            pairs,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens),
        )
        return [self.prefix_tokens + ids + self.suffix_tokens for ids in inputs["input_ids"]]

    @torch.no_grad()
    def scores(self, pairs: list[str], append_eos: bool = False) -> list[float]:
        ids = self.input_ids(pairs)
        if append_eos:
            ids = [seq + [self.tokenizer.convert_tokens_to_ids("<|endoftext|>")] for seq in ids]
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        logits = self.model(**batch).logits[:, -1, :]
        stacked = torch.stack([logits[:, self.no], logits[:, self.yes]], dim=1)
        return torch.nn.functional.log_softmax(stacked, dim=1)[:, 1].exp().tolist()


@pytest.fixture(scope="module")
def card(reranker_path: Path) -> ModelCard:
    return ModelCard(reranker_path)


@pytest.fixture(scope="module")
def reranker(reranker_path: Path) -> Qwen3Reranker:
    return Qwen3Reranker(reranker_path, device="cpu")


def assert_scores_close(ours: list[float], reference: list[float]) -> None:
    assert len(ours) == len(reference)
    assert max(abs(a - b) for a, b in zip(ours, reference)) < TOL, (ours, reference)


def test_scores_equal_model_card(reranker: Qwen3Reranker, card: ModelCard) -> None:
    ours = reranker.score(QUERY, DOCUMENTS)
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in ours)
    assert_scores_close(ours, card.scores([card_body(CARD_INSTRUCTION, QUERY, d) for d in DOCUMENTS]))
    # Distinct documents get distinct scores: the test checkpoint is sensitive enough to rank.
    assert max(ours) - min(ours) > 0.01


def test_custom_instruction_equals_model_card(reranker: Qwen3Reranker, card: ModelCard) -> None:
    task = "Retrieve passages about geography"
    ours = reranker.score(QUERY, DOCUMENTS, instruction=task)
    assert_scores_close(ours, card.scores([card_body(task, QUERY, d) for d in DOCUMENTS]))
    own_default = Qwen3Reranker(reranker.model, device="cpu", instruction=task)
    assert_scores_close(own_default.score(QUERY, DOCUMENTS), ours)


def test_prompt_tokens_equal_model_card_tokens(reranker: Qwen3Reranker, card: ModelCard) -> None:
    ours = reranker.processor.prompt_ids(QUERY, DOCUMENTS, CARD_INSTRUCTION)
    assert ours == card.input_ids([card_body(CARD_INSTRUCTION, QUERY, d) for d in DOCUMENTS])


def test_comparison_catches_prompt_mistakes(reranker: Qwen3Reranker, card: ModelCard) -> None:
    ours = reranker.score(QUERY, DOCUMENTS)
    double_newline = card.scores([card_body(CARD_INSTRUCTION, QUERY, d, sep="\n\n") for d in DOCUMENTS])
    with_eos = card.scores([card_body(CARD_INSTRUCTION, QUERY, d) for d in DOCUMENTS], append_eos=True)
    assert max(abs(a - b) for a, b in zip(ours, double_newline)) > 100 * TOL
    assert max(abs(a - b) for a, b in zip(ours, with_eos)) > 100 * TOL


@pytest.mark.parametrize("max_length", [90, 120])
def test_truncated_long_documents_equal_model_card(reranker_path: Path, max_length: int) -> None:
    ours = Qwen3Reranker(reranker_path, device="cpu", max_length=max_length)
    card = ModelCard(reranker_path, max_length=max_length)
    ids = ours.processor.prompt_ids(QUERY, DOCUMENTS, CARD_INSTRUCTION)
    assert max(len(s) for s in ids) == max_length  # the long document was cut
    suffix = ours.processor.suffix_ids
    assert all(s[-len(suffix) :] == suffix for s in ids)  # and still ends with the assistant suffix
    assert_scores_close(
        ours.score(QUERY, DOCUMENTS), card.scores([card_body(CARD_INSTRUCTION, QUERY, d) for d in DOCUMENTS])
    )


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("batch_tokens", [1, 150, 400, 100_000])
def test_any_batch_split_gives_the_same_scores(
    reranker_path: Path, card: ModelCard, batch_tokens: int, policy: str, share_prefix: bool
) -> None:
    policy_used = replace(POLICIES[policy], batch_tokens=batch_tokens, share_prefix=share_prefix)
    reranker = Qwen3Reranker(reranker_path, device="cpu", batch_policy=policy_used)
    ours = reranker.score(QUERY, DOCUMENTS)
    assert_scores_close(ours, card.scores([card_body(CARD_INSTRUCTION, QUERY, d) for d in DOCUMENTS]))


def test_shared_prefix_path_equals_plain_path(reranker_path: Path) -> None:
    fast = Qwen3Reranker(reranker_path, device="cpu")
    plain = Qwen3Reranker(
        reranker_path, device="cpu", batch_policy=replace(fast.options.batch_policy, share_prefix=False)
    )
    for task in (CARD_INSTRUCTION, "Find geography facts"):
        a, b = fast.score(QUERY, DOCUMENTS, instruction=task), plain.score(QUERY, DOCUMENTS, instruction=task)
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4


@pytest.mark.parametrize("instruction", [None, "Find geography facts"])
def test_equals_sentence_transformers_cross_encoder(
    reranker_path: Path, reranker: Qwen3Reranker, instruction: str | None
) -> None:
    """A second, independent reference: sentence-transformers' CrossEncoder on the causal-LM checkpoint.

    It renders each pair through the checkpoint's role-based chat template (instruction in the system role,
    default instruction otherwise) and scores sigmoid(logit_yes - logit_no) at the last position.
    """
    from sentence_transformers import CrossEncoder

    cross_encoder = CrossEncoder(str(reranker_path), device="cpu", local_files_only=True)
    pairs = [(QUERY, doc) for doc in DOCUMENTS]
    theirs = cross_encoder.predict(pairs, batch_size=3, prompt=instruction).tolist()
    assert_scores_close(reranker.score(QUERY, DOCUMENTS, instruction=instruction), theirs)


def test_seq_cls_checkpoint_equals_transformers_sequence_classifier(
    checkpoints: dict[str, Path], card: ModelCard
) -> None:
    """The converted checkpoint against transformers' own ``AutoModelForSequenceClassification`` forward."""
    from transformers import AutoModelForSequenceClassification

    path = checkpoints["reranker-seq-cls"]
    classifier = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = [
            torch.sigmoid(classifier(input_ids=torch.tensor([ids])).logits[0, 0]).item()
            for ids in card.input_ids([card_body(CARD_INSTRUCTION, QUERY, d) for d in DOCUMENTS])
        ]
    assert_scores_close(Qwen3Reranker(path, device="cpu").score(QUERY, DOCUMENTS), theirs)


def test_full_vocabulary_head_is_never_run(
    reranker_path: Path, card: ModelCard, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    original = transformers.AutoModelForCausalLM.from_pretrained
    loaded: list[torch.nn.Module] = []

    def with_forbidden_head(*args, **kwargs):  # type: ignore[no-untyped-def]
        model = original(*args, **kwargs)

        def refuse(*_: object) -> None:
            raise AssertionError("the full-vocabulary LM head ran")

        model.get_output_embeddings().register_forward_pre_hook(refuse)
        loaded.append(model)
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", with_forbidden_head)
    reranker = Qwen3Reranker(reranker_path, device="cpu", attn_implementation="eager")  # its own, fresh load
    ours = reranker.score(QUERY, DOCUMENTS)
    assert len(loaded) == 1
    with pytest.raises(AssertionError, match="LM head ran"):  # the hook does fire when the head runs
        loaded[0](input_ids=torch.tensor([[1, 2, 3]]))
    assert_scores_close(ours, card.scores([card_body(CARD_INSTRUCTION, QUERY, d) for d in DOCUMENTS]))


def test_rank_is_sorted_scores_with_top_n(reranker: Qwen3Reranker) -> None:
    scores = reranker.score(QUERY, DOCUMENTS)
    ranked = reranker.rank(QUERY, DOCUMENTS)
    assert [i for i, _ in ranked] == sorted(range(len(DOCUMENTS)), key=lambda i: -scores[i])
    assert [s for _, s in ranked] == sorted(scores, reverse=True)
    assert reranker.rank(QUERY, DOCUMENTS, top_n=3) == ranked[:3]
    assert reranker.rank(QUERY, DOCUMENTS, top_n=100) == ranked


# --- bad input ---------------------------------------------------------------------------------------------


def test_empty_documents_return_empty_without_loading(reranker_path: Path) -> None:
    reranker = Qwen3Reranker(reranker_path, device="cpu", attn_implementation="eager", max_length=77)
    assert reranker.score(QUERY, []) == []
    assert reranker.rank(QUERY, []) == []
    assert reranker.loaded is None
    assert reranker.cache_key not in cached_keys()


def test_non_string_document_names_its_index(reranker: Qwen3Reranker) -> None:
    with pytest.raises(TypeError, match=r"documents\[1\] is a float"):
        reranker.score(QUERY, ["ok", 1.5])  # type: ignore[list-item]


@pytest.mark.parametrize("query", ["", "   "])
def test_empty_query_is_rejected(reranker: Qwen3Reranker, query: str) -> None:
    with pytest.raises(ValueError, match="query is empty"):
        reranker.score(query, ["doc"])


def test_query_too_long_for_max_length(reranker_path: Path) -> None:
    reranker = Qwen3Reranker(reranker_path, device="cpu", max_length=64)
    with pytest.raises(ValueError, match=r"leaving no room for a document within max_length=64"):
        reranker.score("word " * 100, ["doc"])


@pytest.mark.parametrize("top_n", [0, -2])
def test_top_n_below_one(reranker: Qwen3Reranker, top_n: int) -> None:
    with pytest.raises(ValueError, match="top_n must be at least 1"):
        reranker.rank(QUERY, ["doc"], top_n=top_n)


def test_not_a_reranker_checkpoint(tmp_path: Path) -> None:
    from qwen3_retrieval.testing import build_tokenizer

    folder = build_tokenizer(tmp_path / "tokenizer-only")
    with pytest.raises(ValueError, match="could not load model"):
        Qwen3Reranker(folder, device="cpu").score(QUERY, ["doc"])
