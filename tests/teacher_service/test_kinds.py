"""ColBERT and cross-encoder teachers through the real service, checked against direct computations.

The checkpoints are tiny (random weights, MiniLM's tokenizer) but saved in the on-disk layouts
users have: a ColBERTv2 ``HF_ColBERT`` directory, a sentence-transformers ``CrossEncoder``
directory, and a dual-pooled CE directory as ``tightdistill train-teacher --kind ce`` writes it.
The references below recompute everything with plain transformers + torch, by hand.
"""

from __future__ import annotations

import json
import string
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

from teacher_service.arrow_io import ARROW_STREAM, ipc_to_arrays
from teacher_service.client import TeacherClient
from teacher_service.errors import RequestTooLarge, UnsupportedSignal
from teacher_service.kinds import build_teacher
from teacher_service.schemas import parse_request
from teacher_service.spec import TeacherSpec
from tiny_checkpoints import DUAL_META

APP = "pair-teachers"  # conftest.py's pair_app
QUERIES = ["how are glacier caves formed?", "what do vaccines do", "who wrote hamlet"]
DOCS = [
    "A glacier cave is a cave formed within the ice of a glacier.",
    "The stock market fell sharply on Monday!",
    "Vaccines train the immune system to recognise a pathogen.",
    "Penguins live in the southern hemisphere.",
    "Hamlet is a tragedy, written by William Shakespeare.",
    "Photosynthesis converts light into chemical energy.",
]


# --- the service: the session's app of pair-scoring teachers (conftest.py's pair_app) -----------
@pytest.fixture(scope="module")
def checkpoints(pair_checkpoints: dict[str, Path]) -> dict[str, Path]:
    return pair_checkpoints


@pytest.fixture(scope="module")
def kinds_app(pair_app: dict) -> dict:
    return pair_app


@pytest.fixture(scope="module")
def handle_client(kinds_app) -> TeacherClient:
    return TeacherClient.from_serve(APP)


@pytest.fixture(scope="module")
def http_client(kinds_app) -> TeacherClient:
    return TeacherClient.from_url(kinds_app["url"], retries=1)


@pytest.fixture(scope="module")
def local_teachers(kinds_app, checkpoints) -> dict:
    """The tiny teachers built in-process: the unbatched reference.

    Segment pooling is only checked in-process (same operation code as a replica, see
    test_concurrent_requests_equal_unbatched): one replica fewer keeps the module's start-up short.
    """
    seg = TeacherSpec(name="ce-seg", kind="cross_encoder", checkpoint=str(checkpoints["ce-dual"]), options={"pooling": "segment_mean"})
    specs = [s for s in kinds_app["config"].teachers if s.checkpoint != "minilm-l6"] + [seg]
    return {s.name: build_teacher(s) for s in specs}


def local(local_teachers, name, op, **payload):
    return local_teachers[name].run(parse_request(op, {"teacher": name, **payload}))


# --- hand-written references -------------------------------------------------------------------
def colbert_reference(model_dir: Path, queries: list[str], docs: list[str]) -> tuple[np.ndarray, list[int]]:
    """MaxSim matrix ``[nq, nd]`` computed text by text with explicit loops, plus each doc's kept count."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    state = load_file(str(model_dir / "model.safetensors"))
    linear = state.pop("linear.weight")
    bert = BertModel(BertConfig.from_pretrained(model_dir)).eval()
    bert.load_state_dict({k.removeprefix("bert."): v for k, v in state.items()})
    meta = json.loads((model_dir / "artifact.metadata").read_text())
    q_marker, d_marker = tok.convert_tokens_to_ids([meta["query_token_id"], meta["doc_token_id"]])
    punct = {tok.encode(p, add_special_tokens=False)[0] for p in string.punctuation}

    def embed(ids: list[int], attended: int) -> torch.Tensor:
        with torch.no_grad():
            mask = torch.tensor([[1] * attended + [0] * (len(ids) - attended)])
            hidden = bert(input_ids=torch.tensor([ids]), attention_mask=mask).last_hidden_state[0]
        return torch.nn.functional.normalize(hidden @ linear.T, dim=-1)

    q_embs = []
    for q in queries:
        ids = tok.encode(q, truncation=True, max_length=meta["query_maxlen"] - 1)
        ids = [ids[0], q_marker, *ids[1:]]
        real = len(ids)
        ids += [tok.mask_token_id] * (meta["query_maxlen"] - real)  # query augmentation, not attended
        q_embs.append(embed(ids, real))
    d_embs = []
    for d in docs:
        ids = tok.encode(d, truncation=True, max_length=meta["doc_maxlen"] - 1)
        ids = [ids[0], d_marker, *ids[1:]]
        emb = embed(ids, len(ids))
        d_embs.append(emb[[i for i, t in enumerate(ids) if t not in punct]])
    scores = np.zeros((len(queries), len(docs)), dtype=np.float32)
    for a, qe in enumerate(q_embs):
        for b, de in enumerate(d_embs):
            scores[a, b] = sum(max(float(qv @ dv) for dv in de) for qv in qe)
    return scores, [len(d) for d in d_embs]


def ce_reference(model_dir: Path, queries: list[str], docs: list[str], pooling: str) -> np.ndarray:
    """Scores of aligned pairs, one unpadded forward pass each."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    scores = []
    if pooling == "cls":
        model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    else:
        model = BertModel.from_pretrained(model_dir).eval()
        scale = json.loads((model_dir / "tightdistill_ce.json").read_text())["score_scale"]
    for q, d in zip(queries, docs):
        enc = tok(q, d, return_tensors="pt")
        with torch.no_grad():
            if pooling == "cls":
                scores.append(model(**enc).logits[0, 0].item())
                continue
            hidden = model(**enc).last_hidden_state[0]
        ids = enc["input_ids"][0].tolist()
        sep = ids.index(tok.sep_token_id)
        if pooling == "special_token":
            emb_q, emb_d = hidden[0], hidden[sep]
        else:  # segment means: query tokens between [CLS] and [SEP], document tokens before the last [SEP]
            emb_q, emb_d = hidden[1:sep].mean(0), hidden[sep + 1 : len(ids) - 1].mean(0)
        scores.append(scale * float(emb_q @ emb_d))
    return np.array(scores, dtype=np.float32)


# --- tests -------------------------------------------------------------------------------------
def test_teachers_describe_themselves(http_client, handle_client):
    infos = {t["name"]: t for t in http_client.teachers()}
    colbert = infos["colbert"]
    assert (colbert["kind"], colbert["similarity"], colbert["dim"], colbert["token_dim"]) == ("colbert", "maxsim", 16, 16)
    assert colbert["signals"] == ["scores", "pooled_embeddings", "token_embeddings"]
    assert (colbert["max_query_length"], colbert["max_document_length"]) == (12, 40)  # from artifact.metadata
    assert "MaxSim" in colbert["matrix_cost"]
    assert infos["colbert-minilm"]["token_dim"] == 384  # zero-shot: raw MiniLM token states
    ce, dual = infos["ce"], infos["ce-dual"]
    assert (ce["kind"], ce["similarity"], ce["dim"], ce["signals"]) == ("cross_encoder", "cross-attention", None,
                                                                        ["scores", "joint_embeddings"])
    assert (ce["joint_dim"], dual["joint_dim"]) == (32, None)
    assert ce["matrix_cost"] == "B x N forward passes over (query, document) pairs" and ce["max_matrix_pairs"] == 12
    assert (dual["dim"], dual["signals"], dual["max_matrix_pairs"]) == (32, ["scores", "proxy_embeddings"], 4096)
    assert handle_client.teachers() == http_client.teachers()


def test_colbert_maxsim_matches_hand_computation(handle_client, checkpoints):
    ref, _ = colbert_reference(checkpoints["colbert"], QUERIES, DOCS)
    got = handle_client.score(QUERIES, DOCS, mode="matrix", teacher="colbert")
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    pairs = handle_client.score(QUERIES, DOCS[:3], mode="pairs", teacher="colbert")
    np.testing.assert_allclose(pairs, np.diag(got[:, :3]), rtol=1e-5, atol=1e-5)


def test_colbert_tokens_over_http_arrow(kinds_app, checkpoints, http_client):
    body = {"teacher": "colbert", "texts": ["a , b .", "a b", DOCS[4]], "role": "document", "tokens": True}
    resp = requests.post(kinds_app["url"] + "/v1/encode", json=body, headers={"Accept": ARROW_STREAM}, timeout=60)
    assert resp.headers["content-type"].startswith(ARROW_STREAM), resp.text
    arrays = ipc_to_arrays(resp.content)
    lengths = arrays["token_lengths"]
    tok = AutoTokenizer.from_pretrained(checkpoints["colbert"])
    with_punct = len(tok.encode("a , b .")) + 1  # + the [D] marker
    assert lengths[0] == lengths[1] == 5 < with_punct  # [CLS] [D] a b [SEP]: the comma and full stop are gone
    assert lengths[2] == colbert_reference(checkpoints["colbert"], QUERIES[:1], DOCS[4:5])[1][0]
    assert arrays["token_embeddings"].shape == (lengths.sum(), 16) and arrays["embeddings"].shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(arrays["token_embeddings"], axis=1), 1.0, atol=1e-5)
    # Pooled = mean of the kept token embeddings.
    np.testing.assert_allclose(arrays["embeddings"][0], arrays["token_embeddings"][:5].mean(0), atol=1e-6)

    signals = http_client.signals(QUERIES, DOCS, tokens=True, teacher="colbert")
    assert (signals["query_token_lengths"] == 12).all()  # queries keep all query_maxlen positions ([MASK] augmentation)
    assert signals["query_token_embeddings"].shape == (3 * 12, 16)
    assert signals["document_token_lengths"].sum() == len(signals["document_token_embeddings"])


def test_ce_scores_match_direct_logits(handle_client, checkpoints):
    got = handle_client.score(QUERIES, DOCS[:3], mode="pairs", teacher="ce")
    np.testing.assert_allclose(got, ce_reference(checkpoints["ce"], QUERIES, DOCS[:3], "cls"), rtol=1e-4, atol=1e-5)
    matrix = handle_client.score(QUERIES, DOCS[:4], mode="matrix", teacher="ce")  # 12 pairs: at the limit
    assert matrix.shape == (3, 4)
    np.testing.assert_allclose(np.diag(matrix[:, :3]), got, rtol=1e-5, atol=1e-5)


def test_cls_ce_joint_embeddings_are_the_pairs_final_cls_states(handle_client, http_client, checkpoints):
    """The [CLS]-pooled CE's joint embeddings (EmbedDistill's naive joint matching target): per pair
    in mode 'pairs', from (query i, its positive) in the batch layout of mode 'matrix'."""
    tok = AutoTokenizer.from_pretrained(checkpoints["ce"])
    model = AutoModelForSequenceClassification.from_pretrained(checkpoints["ce"]).eval()

    def cls_state(q: str, d: str) -> np.ndarray:
        with torch.no_grad():
            return model(**tok(q, d, return_tensors="pt"), output_hidden_states=True).hidden_states[-1][0, 0].numpy()

    pairs = handle_client.signals(QUERIES, DOCS[:3], mode="pairs", teacher="ce")
    assert set(pairs) == {"scores", "joint_embeddings"} and pairs["joint_embeddings"].shape == (3, 32)
    np.testing.assert_allclose(pairs["joint_embeddings"], [cls_state(q, d) for q, d in zip(QUERIES, DOCS)], rtol=1e-4, atol=1e-5)
    # matrix over 2 queries x 4 documents: query i's group starts at document 2 * i (its positive)
    matrix = http_client.signals(QUERIES[:2], DOCS[:4], mode="matrix", teacher="ce")
    np.testing.assert_allclose(matrix["joint_embeddings"], [cls_state(QUERIES[0], DOCS[0]), cls_state(QUERIES[1], DOCS[2])],
                               rtol=1e-4, atol=1e-5)


def test_dual_pooled_scores_and_proxies(handle_client, checkpoints):
    """Special-token pooling (from tightdistill_ce.json) through the service; proxies per the documented layout."""
    pairs = handle_client.signals(QUERIES, DOCS[:3], mode="pairs", teacher="ce-dual")
    ref = ce_reference(checkpoints["ce-dual"], QUERIES, DOCS[:3], "special_token")
    np.testing.assert_allclose(pairs["scores"], ref, rtol=1e-4, atol=1e-5)
    q, d = pairs["query_embeddings"], pairs["document_embeddings"]
    assert q.shape == d.shape == (3, 32)
    np.testing.assert_allclose(DUAL_META["score_scale"] * (q * d).sum(1), pairs["scores"], rtol=1e-4, atol=1e-5)

    # Matrix layout: 3 queries x 6 documents, query i owns documents 2i (its positive) and 2i + 1.
    matrix = handle_client.signals(QUERIES, DOCS, mode="matrix", teacher="ce-dual")
    assert matrix["scores"].shape == (3, 6)
    full = handle_client.signals([q for q in QUERIES for _ in DOCS], DOCS * 3, mode="pairs", teacher="ce-dual")  # all 18 pairs
    np.testing.assert_allclose(matrix["scores"].ravel(), full["scores"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(matrix["query_embeddings"], full["query_embeddings"][[0 * 6 + 0, 1 * 6 + 2, 2 * 6 + 4]], atol=1e-5)
    owners = np.arange(6) // 2
    np.testing.assert_allclose(matrix["document_embeddings"], full["document_embeddings"][owners * 6 + np.arange(6)], atol=1e-5)


def test_segment_pooled_scores(local_teachers, checkpoints):
    out = local(local_teachers, "ce-seg", "signals", queries=QUERIES, documents=DOCS[:3], mode="pairs")
    ref = ce_reference(checkpoints["ce-dual"], QUERIES, DOCS[:3], "segment_mean")
    np.testing.assert_allclose(out["scores"], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(DUAL_META["score_scale"] * (out["query_embeddings"] * out["document_embeddings"]).sum(1),
                               out["scores"], rtol=1e-4, atol=1e-5)


def test_concurrent_requests_equal_unbatched(handle_client, local_teachers, kinds_app):
    from ray import serve

    rng = np.random.default_rng(0)
    jobs = []
    for k in range(16):
        qs = [QUERIES[i] for i in rng.integers(0, 3, size=2)]
        ds = [DOCS[i] for i in rng.integers(0, 6, size=2)]
        jobs.append(("colbert" if k % 2 else "ce-dual", qs, ds))
    before = {n: serve.get_deployment_handle(f"teacher-{n}", APP).stats.remote().result() for n in ("colbert", "ce-dual")}

    def call(job):
        name, qs, ds = job
        return handle_client.signals(qs, ds, mode="pairs" if name == "ce-dual" else "matrix", tokens=name == "colbert", teacher=name)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(call, jobs))
    for (name, qs, ds), out in zip(jobs, got):
        ref = local(local_teachers, name, "signals", queries=qs, documents=ds, mode="pairs" if name == "ce-dual" else "matrix",
                    tokens=name == "colbert")
        assert set(out) == set(ref)
        for key in ref:
            np.testing.assert_allclose(out[key], ref[key], rtol=1e-4, atol=1e-5, err_msg=f"{name} {key}")
    after = {n: serve.get_deployment_handle(f"teacher-{n}", APP).stats.remote().result() for n in ("colbert", "ce-dual")}
    assert any(after[n]["largest_batch_jobs"] > 1 for n in after), "concurrent requests were never merged"
    assert all(after[n]["batches"] - before[n]["batches"] < 2 * 8 for n in after)


def test_ce_refusals(kinds_app, handle_client):
    url = kinds_app["url"]
    big = {"teacher": "ce", "queries": QUERIES, "documents": DOCS, "mode": "matrix"}  # 18 pairs > 12
    resp = requests.post(url + "/v1/score", json=big, timeout=30)
    assert resp.status_code == 413, resp.text
    err = resp.json()["error"]
    assert err["code"] == "request_too_large" and "12" in err["message"] and "mode 'pairs'" in err["message"]
    with pytest.raises(RequestTooLarge, match="max_matrix_pairs"):
        handle_client.score(QUERIES, DOCS, mode="matrix", teacher="ce")

    resp = requests.post(url + "/v1/signals", json={"teacher": "ce", "queries": QUERIES[:1], "documents": DOCS[:1],
                                                    "tokens": True}, timeout=30)
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "unsupported_signal"
    assert "it gives: scores, joint_embeddings" in resp.json()["error"]["message"]
    with pytest.raises(UnsupportedSignal, match="proxy_embeddings"):
        handle_client.submit_encode(["a"], teacher="ce-dual").result()
    ok = handle_client.signals(QUERIES[:1], DOCS[:2], embeddings=False, teacher="ce")
    assert set(ok) == {"scores"} and ok["scores"].shape == (1, 2)


@pytest.mark.real_weights
def test_zero_shot_colbert_on_minilm_ranks_scifact_relevant_first(http_client):
    from common.datasets import load_beir

    data = load_beir("scifact")
    qrels = data.qrels("test")
    qid = data.split_query_ids("test")[0]
    relevant = next(d for d, g in qrels[qid].items() if g > 0)
    unrelated = next(d for d in data.doc_ids if d not in qrels[qid])
    texts = data.doc_texts
    docs = [texts[data.doc_index[relevant]], texts[data.doc_index[unrelated]]]
    scores = http_client.score([data.query_text[qid]], docs, mode="matrix", teacher="colbert-minilm")
    assert scores[0, 0] > scores[0, 1] + 0.5  # 5.3 vs 4.2 on this pair


def cpuinfo_bf16() -> bool | None:
    """Whether /proc/cpuinfo lists native bf16 instructions (AVX512-BF16 or AMX tiles), read
    independently of torch; None where there is no x86 flags line to read (not Linux, ARM)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    flags = {f for line in lines if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    return bool(flags & {"avx512_bf16", "amx_tile"}) if flags else None


@pytest.mark.parametrize("avx512_bf16,amx_tile,expected", [
    (False, False, "float32"),  # bf16 would be emulated: slower than float32
    (True, False, "bfloat16"),
    (False, True, "bfloat16"),
    (True, True, "bfloat16"),
])
def test_auto_dtype_follows_the_cpu_feature_probes(monkeypatch, avx512_bf16, amx_tile, expected):
    """resolve_dtype asks torch's CPU probes; each answer they can give picks its own dtype."""
    from common.text_encoder import resolve_dtype

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx_tile)
    assert resolve_dtype("auto", "cpu") == expected, (avx512_bf16, amx_tile)
    # an explicit dtype is used as given, whatever the CPU can do
    assert resolve_dtype("float32", "cpu") == "float32" and resolve_dtype("bfloat16", "cpu") == "bfloat16"


@pytest.mark.parametrize("bf16,expected", [(True, "bfloat16"), (False, "float16")])
def test_auto_dtype_on_a_gpu_follows_its_bf16_support(monkeypatch, bf16, expected):
    from common.text_encoder import resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert resolve_dtype("auto", "cuda") == expected and resolve_dtype("auto", "cuda:1") == expected
    assert resolve_dtype("float32", "cuda") == "float32"


def test_auto_dtype_is_bf16_only_where_the_cpu_runs_it_natively(tiny_bert_dir):
    from common.text_encoder import resolve_dtype

    native = cpuinfo_bf16()  # the kernel's view of this CPU, not torch's probes
    if native is not None:
        assert resolve_dtype("auto", "cpu") == ("bfloat16" if native else "float32"), f"cpuinfo bf16 flags: {native}"
    texts = ["a glacier cave forms in ice", "hamlet is a tragedy by shakespeare", "penguins"]
    fp32 = build_teacher(TeacherSpec(name="f", kind="dual_encoder", checkpoint=str(tiny_bert_dir)))
    auto = build_teacher(TeacherSpec(name="a", kind="dual_encoder", checkpoint=str(tiny_bert_dir), dtype="auto"))
    a, b = fp32.encode(texts, "document").pooled, auto.encode(texts, "document").pooled
    assert auto.describe().dtype == resolve_dtype("auto", "cpu") and fp32.describe().dtype == "float32"
    assert a.dtype == b.dtype == np.float32  # embeddings leave the teacher as float32 whatever it computes in
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() > 0.99
