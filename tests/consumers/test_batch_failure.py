"""A batch the model rejects as a whole is retried one document at a time: the culprit goes to the
dead-letter sink with ``processing_error``, the rest are learned once, and the service keeps going."""

from __future__ import annotations

import json

import numpy as np

from xtream.consumers.config import Settings
from xtream.consumers.intake import EmbeddedIntake
from xtream.consumers.wiring import DEMO_STREAM, build_service
from xtream.errors import BatchRefused
from xtream.stream.records import Record
from xtream.stream.schemas import EmbeddedDocument

POISON = "poisonpill"


def test_only_the_document_the_model_rejects_is_dead_lettered(tmp_path):
    docs = [json.loads(line) for line in DEMO_STREAM.read_text(encoding="utf-8").splitlines()]
    docs.insert(200, {"id": "culprit", "text": f"The {POISON} story about markets and trade", "lang": "en"})
    stream = tmp_path / "in.jsonl"
    stream.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    s = Settings(data_dir=tmp_path / "data", input_file=stream)
    s = s.model_copy(update={
        "model": s.model.model_copy(update=dict(num_topics=6, warmup_docs=120, warmup_steps=5, batch_size=32,
                                                vocab_min_df=1, train_every_docs=60, train_steps=1,
                                                train_in_background=False)),
        "batch": s.batch.model_copy(update=dict(max_records=40)),
    })
    service = build_service(s)
    learn_many = service.model.learn_many

    def rejecting(tokens, embeddings, langs):
        if any(POISON in doc_tokens for doc_tokens in tokens):
            raise BatchRefused("this document breaks the model")
        return learn_many(tokens, embeddings, langs)

    service.model.learn_many = rejecting
    service.run()
    service.close()

    dead = [json.loads(line) for line in (tmp_path / "data" / "dead_letters.jsonl").read_text().splitlines()]
    assert len(dead) == 1
    headers = dict(dead[0]["headers"])
    assert headers["xtream.error.reason"] == "processing_error"
    assert "breaks the model" in headers["xtream.error.detail"]
    assert json.loads(dead[0]["value"])["id"] == "culprit"
    assert service.model.n_docs == len(docs) - 1, "every other document of the failed batch was learned once"


def test_embedded_intake_keeps_the_consumed_record_of_each_document():
    """The trainer dead-letters the embedded record it consumed, not a lookup by the original input's offset."""
    intake = EmbeddedIntake(dim=4)
    vec = EmbeddedDocument.encode_vector(np.ones(4, np.float32))
    records = [Record("emb", 0, 10 + i, EmbeddedDocument(id=f"d{i}", lang="en", tokens=["a"], embedding=vec, dim=4,
                                                           source_topic="in", source_partition=3,
                                                           source_offset=i).model_dump_json().encode(), None, (), None)
               for i in range(3)]
    batch = intake.prepare(records)
    assert [r.offset for r in batch.records] == [10, 11, 12]
    assert [it.source_offset for it in batch.items] == [0, 1, 2]
