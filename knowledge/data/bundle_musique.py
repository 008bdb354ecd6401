"""Rebuild knowledge/data/musique_*.jsonl.gz from the HippoRAG v1 MuSiQue files (see knowledge/data/SOURCE.md).

    python knowledge/data/bundle_musique.py /work/shared/data/musique-hipporag knowledge/data

Output is deterministic (gzip mtime 0, records in source order).
"""

from __future__ import annotations

import gzip
import json
import os
import sys

CORPUS = "musique_train_corpus.json"
QUESTIONS = "musique_train.json"
OPENIE = "openie_musique_train_results_ner_gpt-3.5-turbo-1106_1890.json"


def _write(path: str, records: list[dict]) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as f:
        for record in records:
            f.write((json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
    print(f"{path}: {len(records)} records, {os.path.getsize(path):,} bytes")


def main(source: str, dest: str) -> None:
    with open(os.path.join(source, CORPUS), encoding="utf-8") as f:
        corpus = json.load(f)
    with open(os.path.join(source, QUESTIONS), encoding="utf-8") as f:
        questions = json.load(f)
    with open(os.path.join(source, OPENIE), encoding="utf-8") as f:
        docs = json.load(f)["docs"]
    position = {(p["title"], p["text"]): i for i, p in enumerate(corpus)}
    if len(position) != len(corpus) or len(docs) != len(corpus):
        raise SystemExit("corpus passages are not unique or OpenIE docs do not align with the corpus")

    _write(os.path.join(dest, "musique_corpus.jsonl.gz"), [{"title": p["title"], "text": p["text"]} for p in corpus])

    out = []
    for q in questions:
        supporting = [p for p in q["paragraphs"] if p["is_supporting"]]
        out.append({
            "id": q["id"], "question": q["question"], "answer": q["answer"],
            "answer_aliases": q.get("answer_aliases", []),
            "supporting_titles": [p["title"] for p in supporting],
            "supporting_idx": [position[(p["title"], p["paragraph_text"])] for p in supporting],
            "decomposition": [{"question": d["question"], "answer": d["answer"]}
                              for d in q["question_decomposition"]],
        })
    _write(os.path.join(dest, "musique_questions.jsonl.gz"), out)

    triples = []
    for i, (doc, passage) in enumerate(zip(docs, corpus, strict=True)):
        if (doc["title"], doc["text"]) != (passage["title"], passage["text"]):
            raise SystemExit(f"OpenIE doc {i} does not match corpus passage {i}")
        kept = [t for t in doc["extracted_triples"]
                if isinstance(t, list) and len(t) == 3 and all(isinstance(x, str) and x.strip() for x in t)]
        triples.append({"idx": i, "title": doc["title"],
                        "entities": [e for e in doc["extracted_entities"] if isinstance(e, str) and e.strip()],
                        "triples": kept})
    _write(os.path.join(dest, "musique_openie.jsonl.gz"), triples)


if __name__ == "__main__":
    main(*(sys.argv[1:3] if len(sys.argv) >= 3 else ("/work/shared/data/musique-hipporag", "knowledge/data")))
