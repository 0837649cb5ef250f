"""The sentence-transformers losses with a live teacher: their maths by hand, their forward pass
against the real service, and real SentenceTransformerTrainer steps that call the teacher every batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("accelerate", reason="SentenceTransformerTrainer needs accelerate")
pytest.importorskip("datasets", reason="SentenceTransformerTrainer needs datasets")

from datasets import Dataset  # noqa: E402
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments  # noqa: E402
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator  # noqa: E402

from student_trainer.integrations import (  # noqa: E402
    OnlineEmbeddingMSELoss,
    OnlineInBatchKLLoss,
    OnlineMarginMSELoss,
    TeacherTextCollator,
    keep_raw_texts,
)
from student_trainer.integrations.texts import RawTextPreprocess  # noqa: E402
from teacher_service.client import TeacherClient  # noqa: E402
from teacher_service.errors import UnknownTeacher  # noqa: E402

QUERIES = ["what causes glacier caves", "does aspirin thin the blood", "how do vaccines train immunity",
           "why is the sky blue", "what is the speed of light", "who wrote the origin of species"]
POSITIVES = ["A glacier cave is formed by meltwater running within the ice of a glacier.",
             "Aspirin irreversibly inhibits platelet cyclooxygenase and so reduces clotting.",
             "Vaccines expose the immune system to an antigen so memory cells form.",
             "Rayleigh scattering of sunlight by air molecules favours short blue wavelengths.",
             "Light travels at 299,792,458 metres per second in vacuum.",
             "Charles Darwin published On the Origin of Species in 1859."]
NEGATIVES = ["The stock market fell on Monday after weak earnings.", "Bread rises because yeast releases gas.",
             "The football season starts in August.", "Copper is a good conductor of electricity.",
             "Tea was first drunk in China.", "Penguins live mostly in the southern hemisphere."]


def triples(n: int = 6) -> Dataset:
    return Dataset.from_dict({"query": QUERIES[:n], "positive": POSITIVES[:n], "negative": NEGATIVES[:n]})


def replica_requests(teacher: str, app: str = "tightdistill") -> int:
    from ray import serve

    return serve.get_deployment_handle(f"teacher-{teacher}", app).stats.remote().result()["requests"]


@pytest.fixture
def student(tiny_bert_dir) -> SentenceTransformer:
    torch.manual_seed(0)
    return SentenceTransformer(str(tiny_bert_dir), device="cpu")


@pytest.fixture(scope="module")
def clients(teacher_app) -> dict[str, TeacherClient]:
    return {"http": TeacherClient.from_url(teacher_app["url"]), "handle": TeacherClient.from_serve(teacher_app["app_name"])}


def collated(model: SentenceTransformer, data: Dataset) -> list[dict]:
    """The per-column feature dicts the trainer hands a loss: the collator's batch split the way
    ``SentenceTransformerTrainer.collect_features`` splits it (by the ``{column}_`` prefix)."""
    batch = TeacherTextCollator(model.preprocess)(list(data))
    return [{key[len(column) + 1:]: value for key, value in batch.items() if key.startswith(column + "_")}
            for column in data.column_names]


def train(model: SentenceTransformer, loss: torch.nn.Module, data: Dataset, tmp_path, steps: int,
          collator: bool = True) -> float:
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=3, learning_rate=1e-3,
        report_to="none", save_strategy="no", use_cpu=True, logging_steps=1, seed=0)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss,
                                         data_collator=TeacherTextCollator(model.preprocess) if collator else None)
    return trainer.train().training_loss


def test_collator_keeps_the_strings_of_text_columns_only(tiny_bert_dir):
    model = SentenceTransformer(str(tiny_bert_dir), device="cpu")
    rows = [{"query": "q one", "positive": "Doc ONE, cased", "label": 0.5},
            {"query": "q two", "positive": "doc two", "label": 0.25}]
    batch = TeacherTextCollator(model.preprocess)(rows)
    assert batch["query_raw_text"] == ["q one", "q two"]
    assert batch["positive_raw_text"] == ["Doc ONE, cased", "doc two"]  # as written: not lower-cased, not decoded
    assert "label_raw_text" not in batch and batch["label"].tolist() == [0.5, 0.25]
    stock = SentenceTransformerDataCollator(model.preprocess)(rows)
    assert set(batch) - set(stock) == {"query_raw_text", "positive_raw_text"}


# --- the maths, by hand, on fixed tensors (teacher scores given, not fetched) --------------------

def test_margin_mse_by_hand(student, clients):
    loss = OnlineMarginMSELoss(student, clients["handle"], "tiny")
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos, neg = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    teacher = torch.tensor([[5.0, 3.0], [1.0, 2.0]])  # [B, 1 + k], positive first
    # student margins: 2 - 1 = 1 and 1 - 3 = -2; teacher margins: 2 and -1
    expected = ((1 - 2) ** 2 + (-2 - (-1)) ** 2) / 2
    assert float(loss.compute_loss_from_embeddings([q, pos, neg], teacher)) == pytest.approx(expected)


def softmax(row: list[float]) -> list[float]:
    z = sum(math.exp(x) for x in row)
    return [math.exp(x) / z for x in row]


def kl_plus_onehot(student_rows: list[list[float]], teacher_rows: list[list[float]], labels: list[int],
                   tau: float, gamma: float) -> float:
    total = 0.0
    for s, t, y in zip(student_rows, teacher_rows, labels):
        p, p_hat = softmax(s), softmax([x / tau for x in t])
        total += gamma * -math.log(p[y]) + (1 - gamma) * sum(a * math.log(a / b) for a, b in zip(p_hat, p))
    return total / len(labels)


def test_in_batch_kl_by_hand(student, clients):
    loss = OnlineInBatchKLLoss(student, clients["handle"], "tiny", tau=0.5, gamma=0.3, scale=2.0)
    # 1-d embeddings so every student score is a product of two numbers.
    q, pos, neg = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.5], [1.0]]), torch.tensor([[-1.0], [0.25]])
    # In-batch documents in row-major order: pos0, neg0, pos1, neg1; query i's positive at column 2i.
    docs = [0.5, -1.0, 1.0, 0.25]
    student_rows = [[2.0 * qi * d for d in docs] for qi in (1.0, 2.0)]
    teacher = [[3.0, 1.0, 0.5, 0.0], [0.0, 1.0, 2.5, 2.0]]
    expected = kl_plus_onehot(student_rows, teacher, [0, 2], tau=0.5, gamma=0.3)
    got = loss.compute_loss_from_embeddings([q, pos, neg], torch.tensor(teacher))
    assert float(got) == pytest.approx(expected, rel=1e-5)

    triplet = OnlineInBatchKLLoss(student, clients["handle"], "tiny", tau=0.5, gamma=0.3, scale=2.0, scope="triplet")
    own_teacher = [[3.0, 1.0], [2.5, 2.0]]
    expected = kl_plus_onehot([[1.0, -2.0], [4.0, 1.0]], own_teacher, [0, 0], tau=0.5, gamma=0.3)
    got = triplet.compute_loss_from_embeddings([q, pos, neg], torch.tensor(own_teacher))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert OnlineInBatchKLLoss(student, clients["handle"], "tiny", tau=0.5).scale == 2.0  # default: 1 / tau


def test_embedding_mse_by_hand(student, clients):
    s, t = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    mse = OnlineEmbeddingMSELoss(student, clients["handle"], "tiny")
    assert mse.projection is None  # tiny teacher and tiny student are both 32-d
    # squared differences 0, 4, 9, 16 over 4 entries; a second column pulled to itself adds 0
    assert float(mse.compute_loss_from_embeddings([s, t], [t, t])) == pytest.approx((29 / 4 + 0) / 2)
    l2 = OnlineEmbeddingMSELoss(student, clients["handle"], "tiny", distance="l2", projection=True)
    with torch.no_grad():
        l2.projection.weight.copy_(2 * torch.eye(32))
        l2.projection.bias.zero_()
    s32, t32 = torch.zeros(2, 32), torch.zeros(2, 32)
    s32[:, :2], t32[:, :2] = s, t
    # projected rows (2, 4) and (6, 8); distances to (1, 0) and (0, 0): sqrt(1 + 16) and 10
    assert l2.compute_loss_from_embeddings([s32], [t32]).item() == pytest.approx((math.sqrt(17) + 10) / 2, rel=1e-6)


# --- the forward pass: the teacher's answers for the batch's own texts ----------------------------

def teacher_reference(kind: str, client: TeacherClient, texts: list[list[str]]):
    """The teacher targets fetched independently, one plain client call per column."""
    q, docs = texts[0], texts[1:]
    if kind == "margin":
        return torch.tensor(np.stack([client.score(q, col, mode="pairs", teacher="tiny") for col in docs], axis=1))
    if kind == "kl":
        layout = [col[i] for i in range(len(q)) for col in docs]
        return torch.tensor(client.score(q, layout, mode="matrix", teacher="tiny"))
    return [torch.tensor(client.encode(col, role="query" if c == 0 else "document", teacher="tiny"))
            for c, col in enumerate(texts)]


LOSSES = {
    "margin": lambda model, client: OnlineMarginMSELoss(model, client, "tiny"),
    "kl": lambda model, client: OnlineInBatchKLLoss(model, client, "tiny"),
    "embedding": lambda model, client: OnlineEmbeddingMSELoss(model, client, "tiny"),
}
# Teacher requests one batch costs: a pairs or matrix score; embeddings: one encode per role.
REQUESTS_PER_BATCH = {"margin": 1, "kl": 1, "embedding": 2}


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_forward_uses_the_teachers_answers_for_the_batch_texts(kind, student, clients):
    data = triples(4)
    loss = LOSSES[kind](student, clients["http"])
    student.eval()  # no dropout: the loss's forward pass and the reference see the same embeddings
    features = collated(student, data)
    got = loss(features, None)
    texts = [data[column] for column in data.column_names]
    with torch.no_grad():
        embeddings = [student.encode(col, convert_to_tensor=True) for col in texts]
    expected = loss.compute_loss_from_embeddings(embeddings, teacher_reference(kind, clients["handle"], texts))
    assert got.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    assert all("raw_text" in f for f in features), "the loss must not strip the texts from the trainer's batch"


# --- real SentenceTransformerTrainer steps, the teacher called for every batch --------------------

# Each loss once, the two transports shared between them (a trainer run costs seconds on 2 cores).
@pytest.mark.parametrize(("kind", "transport"), [("margin", "http"), ("kl", "handle"), ("embedding", "http")])
def test_trainer_calls_the_teacher_every_batch(kind, transport, student, clients, tmp_path):
    loss = LOSSES[kind](student, clients[transport])
    before_params = [p.detach().clone() for p in student.parameters()]
    before = replica_requests("tiny")
    steps = 3
    training_loss = train(student, loss, triples(), tmp_path, steps)
    assert replica_requests("tiny") - before == steps * REQUESTS_PER_BATCH[kind]
    assert math.isfinite(training_loss)
    changed = sum(not torch.equal(a, b.detach()) for a, b in zip(before_params, student.parameters()))
    assert changed > 0, "the student did not train"


def test_projection_to_a_teacher_of_another_dimension_is_trained(student, clients, tmp_path):
    loss = OnlineEmbeddingMSELoss(student, clients["handle"], "minilm")  # 384-d teacher, 32-d student
    assert (loss.projection.in_features, loss.projection.out_features) == (32, 384)
    weight = loss.projection.weight.detach().clone()
    before = replica_requests("minilm")
    train(student, loss, triples(3), tmp_path, steps=1)
    assert replica_requests("minilm") - before == REQUESTS_PER_BATCH["embedding"]
    assert not torch.equal(weight, loss.projection.weight.detach()), "the optimizer did not update the projection"
    with pytest.raises(ValueError, match=r"teacher 'minilm' embeds in 384 dimensions but the student in 32"):
        OnlineEmbeddingMSELoss(student, clients["handle"], "minilm", projection=False)


def test_the_switch_is_the_loss_line_alone(student, teacher_app, tmp_path):
    """An ordinary script's trainer (no data_collator), the loss built from the service's URL."""
    loss = OnlineMarginMSELoss(student, teacher_app["url"], "tiny")
    assert isinstance(student.preprocess, RawTextPreprocess)
    before = replica_requests("tiny")
    assert math.isfinite(train(student, loss, triples(), tmp_path, steps=2, collator=False))
    assert replica_requests("tiny") - before == 2 * REQUESTS_PER_BATCH["margin"]


def test_keeping_the_texts_leaves_the_students_embeddings_alone(tiny_bert_dir):
    model = SentenceTransformer(str(tiny_bert_dir), device="cpu")
    before = model.encode(QUERIES, convert_to_tensor=True)
    keep_raw_texts(model)
    keep_raw_texts(model)  # once only: a second loss on the same student does not wrap it again
    assert isinstance(model.preprocess, RawTextPreprocess) and not isinstance(model.preprocess.preprocess, RawTextPreprocess)
    features = model.preprocess(QUERIES[:2], prompt=None, task=None)
    assert features["raw_text"] == QUERIES[:2]
    assert torch.equal(model.encode(QUERIES, convert_to_tensor=True), before)


def test_without_the_texts_the_error_says_what_to_do(student, clients, tmp_path):
    loss = OnlineMarginMSELoss(student, clients["handle"], "tiny", keep_texts=False)
    assert not isinstance(student.preprocess, RawTextPreprocess)
    with pytest.raises(ValueError, match=r"build the loss before the trainer .* data_collator=TeacherTextCollator\(model.preprocess\)"):
        train(student, loss, triples(3), tmp_path, steps=1, collator=False)


def test_unknown_teacher_and_bad_arguments_fail_at_construction(student, clients):
    with pytest.raises(UnknownTeacher, match=r"unknown teacher 'nope'; the service has: .*minilm.*tiny"):
        OnlineMarginMSELoss(student, clients["http"], "nope")
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        OnlineInBatchKLLoss(student, clients["http"], "tiny", tau=0)
    with pytest.raises(ValueError, match="distance must be one of"):
        OnlineEmbeddingMSELoss(student, clients["http"], "tiny", distance="cos")


def test_the_example_script_trains_against_the_service(teacher_app, capsys):
    """examples/st_live_teacher.py end to end: packaged MiniLM cut to 2 layers, scifact triples."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "st_live_teacher.py"
    spec = importlib.util.spec_from_file_location("st_live_teacher", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    before = replica_requests("minilm")
    code = example.main(["--url", teacher_app["url"], "--teacher", "minilm", "--max-steps", "2", "--examples", "8",
                         "--eval-examples", "4", "--batch-size", "4"])
    out = capsys.readouterr().out
    assert code == 0 and "trained 2 steps" in out, out
    assert replica_requests("minilm") - before == 2 * REQUESTS_PER_BATCH["margin"]
