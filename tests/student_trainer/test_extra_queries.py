"""Extra queries for embedding matching: the corpus and perturbation generators and EmbedDistill's
seq2seq generator (mechanics on a tiny BART saved in the standard HF layout)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

from student_trainer.extra_queries import perturbed_queries
from student_trainer.query_generation import QueryGenerator

QUERIES = ["how are glacier caves formed inside the ice", "what do vaccines train in the body",
           "who wrote the tragedy hamlet", "short query"]


@pytest.fixture(scope="module")
def tiny_bart_dir(tmp_path_factory, minilm_dir: Path) -> Path:
    """A tiny random BART with MiniLM's WordPiece tokenizer ([MASK] is its mask token)."""
    path = tmp_path_factory.mktemp("tiny-bart")
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    config = BartConfig(vocab_size=tok.vocab_size, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                        decoder_start_token_id=tok.cls_token_id, forced_eos_token_id=None)
    BartForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_perturbed_queries_are_seeded_variants_of_the_training_queries():
    a = perturbed_queries(QUERIES, per_query=2, seed=3)
    assert a == perturbed_queries(QUERIES, per_query=2, seed=3)
    assert a and not set(a) & set(QUERIES) and len(set(a)) == len(a)
    vocab = {w for q in QUERIES for w in q.split()}
    assert all(set(v.split()) <= vocab and len(v.split()) >= 3 for v in a)
    assert not any(v.split() and set(v.split()) <= {"short", "query"} for v in a)  # 2-word queries are skipped


def test_generator_masks_ten_percent_and_adds_noise(tiny_bart_dir):
    gen = QueryGenerator(tiny_bart_dir, mask_ratio=0.1, noise_sigma=0.2, per_query=2, max_length=12, seed=0)
    batch = gen.tokenizer(QUERIES[:3], padding=True, return_tensors="pt")
    masked = gen.mask(batch["input_ids"], batch["attention_mask"])
    for row in range(3):
        n_words = int(batch["attention_mask"][row].sum()) - 2  # [CLS] ... [SEP]
        n_masked = int((masked[row] == gen.tokenizer.mask_token_id).sum())
        assert n_masked == max(1, round(0.1 * n_words))
        # special tokens and padding are never masked
        assert masked[row, 0] == gen.tokenizer.cls_token_id
    out = gen.generate_batch(QUERIES[:3])
    assert [len(o) for o in out] == [2, 2, 2]
    # The noise is what makes the two generations of a query differ (the decoder is greedy).
    quiet = QueryGenerator(tiny_bart_dir, mask_ratio=0.0, noise_sigma=0.0, per_query=2, max_length=12, seed=0)
    assert all(a == b for a, b in quiet.generate_batch(QUERIES[:3]))
    loud = QueryGenerator(tiny_bart_dir, mask_ratio=0.0, noise_sigma=50.0, per_query=2, max_length=12, seed=0)
    assert any(a != b for a, b in loud.generate_batch(QUERIES[:3]))


def test_generator_refuses_what_it_cannot_use(tmp_path, tiny_bert_dir):
    with pytest.raises(FileNotFoundError, match="seq2seq checkpoint"):
        QueryGenerator(tmp_path)
    with pytest.raises(ValueError, match="mask_ratio"):
        QueryGenerator(tiny_bert_dir, mask_ratio=1.5)


def test_run_config_builds_each_kind_of_extra_query_pool(tiny_bart_dir, mini_beir):
    from common.datasets import load_beir
    from student_trainer.config import DataConfig
    from student_trainer.extra_queries import build_extra_queries

    dataset = load_beir(mini_beir)
    generated = build_extra_queries("generated", dataset, QUERIES[:3], pool=4, per_query=2, seed=0,
                                    generator=str(tiny_bart_dir), noise=0.2)
    # The pool is the seeded generator's own distinct output for these queries, cut to `pool`
    # (the tiny random BART repeats itself: fewer than 4 distinct generations here, all kept).
    direct = QueryGenerator(tiny_bart_dir, noise_sigma=0.2, per_query=2, seed=0).generate(QUERIES[:3])
    assert set(generated) <= set(direct) and len(set(generated)) == len(generated) == min(4, len(direct)), (direct, generated)
    assert not set(generated) & set(QUERIES)
    assert build_extra_queries("perturbed", dataset, QUERIES, pool=3, per_query=2, seed=0) == \
        build_extra_queries("perturbed", dataset, QUERIES, pool=3, per_query=2, seed=0)
    assert len(build_extra_queries("perturbed", dataset, QUERIES, pool=3, per_query=2, seed=0)) == 3
    assert build_extra_queries("none", dataset, QUERIES, pool=3, per_query=2, seed=0) == []
    with pytest.raises(ValueError, match="data.generator"):
        build_extra_queries("generated", dataset, QUERIES, pool=3, per_query=2, seed=0)
    assert DataConfig(extra_queries="generated", generator=str(tiny_bart_dir), generator_noise=0.2).generated_per_query == 2


def test_more_draws_per_document_give_more_distinct_pseudo_queries_from_the_corpus(mini_beir):
    from common.datasets import load_beir
    from student_trainer.extra_queries import corpus_pseudo_queries

    dataset = load_beir(mini_beir)
    one = corpus_pseudo_queries(dataset, 10**6, seed=3)
    four = corpus_pseudo_queries(dataset, 10**6, seed=3, per_document=4)
    assert one == corpus_pseudo_queries(dataset, 10**6, seed=3, per_document=1)
    assert len(four) > 1.8 * len(one) and len(set(four)) == len(four)
    corpus = " ".join(f"{t} {x}" for t, x in zip(dataset.corpus.column("title").to_pylist(),
                                                   dataset.corpus.column("text").to_pylist()))
    corpus = " ".join(corpus.split())
    assert all(" ".join(q.split()) in corpus for q in four)  # titles, sentences and spans, verbatim up to whitespace
    assert len(corpus_pseudo_queries(dataset, 50, seed=3, per_document=4)) == 50


def test_a_share_of_pseudo_queries_is_phrased_as_questions_over_the_same_draws(mini_beir):
    from common.datasets import load_beir
    from student_trainer.extra_queries import QUESTION_WORDS, build_extra_queries, corpus_pseudo_queries

    dataset = load_beir(mini_beir)
    plain = corpus_pseudo_queries(dataset, 10**6, seed=3, per_document=4)
    asked = corpus_pseudo_queries(dataset, 10**6, seed=3, per_document=4, question_share=0.5)
    assert len(asked) == len(plain) and corpus_pseudo_queries(dataset, 10**6, seed=3, per_document=4, question_share=0.0) == plain
    questions = [(p, a) for p, a in zip(plain, asked) if a != p]
    assert 0.3 * len(plain) < len(questions) < 0.7 * len(plain)
    for p, a in questions:  # an opening, the same text lower-cased at its start, one question mark
        assert a in {f"{opening} {p[:1].lower()}{p[1:].rstrip(' .!?')}?" for opening in QUESTION_WORDS}
    assert build_extra_queries("corpus", dataset, [], pool=10**6, per_query=1, seed=3, per_document=4,
                               question_share=0.5) == asked
