"""The evaluation scorers against hand-worked figures and pycocoevalcap's numbers."""
import json

import numpy as np
import pytest

from xformer_jax.eval.caption import bleu, caption_scores, cider_d, ptb_tokenize
from xformer_jax.eval.counting import (
    counting_accuracy, extract_count, identification_accuracy, mentions_class)
from xformer_jax.eval.gqa import gqa_accuracy
from xformer_jax.eval.recall import itm_rerank, recall_at_k, retrieval_recall
from xformer_jax.eval.score import score
from xformer_jax.eval.vqa import answer_accuracy, normalize_answer, vqa_accuracy


# ---------------------------------------------------------------- VQA

@pytest.mark.parametrize("raw, normalized", [
    ("Two", "2"),                   # number word -> digit (after lowercasing)
    ("dont", "don't"),              # contractions table
    ("a dog.", "dog"),              # article dropped, final period stripped
    ("yes.", "yes"),
    ("The  Ten\tbikes\n", "10 bikes"),
    ("black/white", "black white"),  # a mark inside a word becomes a space
    ("hello, world!", "hello world"),  # a mark touching a space is deleted
    ("1,000", "1000"),              # a comma between digits deletes every mark
    ("3.5", "3.5"),                 # a period followed by a digit is kept
])
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


@pytest.mark.parametrize("agreeing, expected", [
    # 10 leave-one-out subsets of 9 humans, each scored min(1, matches / 3):
    (0, 0.0),
    (1, 0.3),  # 1 subset has 0 matches, 9 have 1: 9 * (1/3) / 10
    (2, 0.6),  # 2 subsets have 1 match, 8 have 2: (2/3 + 16/3) / 10
    (3, 0.9),  # 3 subsets have 2 matches, 7 have 3: (2 + 7) / 10
    (4, 1.0),  # every subset keeps at least 3 matches
])
def test_leave_one_out_accuracy(agreeing, expected):
    humans = ["dog"] * agreeing + ["cat"] * (10 - agreeing)
    assert answer_accuracy("dog", humans) == pytest.approx(expected)


def test_prediction_is_normalized_against_humans():
    assert answer_accuracy("Two", ["2"] * 10) == 1.0
    assert answer_accuracy("a dog.", ["dog"] * 10) == 1.0
    assert answer_accuracy("yes.", ["yes"] * 10) == 1.0
    # Humans who differ get punctuation processing only: "don't." -> "don't" ...
    assert answer_accuracy("dont", ["don't."] * 3 + ["no"] * 7) == pytest.approx(0.9)
    # ... which leaves the space a mark inside the text becomes: "don't!" -> "don't ".
    assert answer_accuracy("dont", ["don't!"] * 3 + ["no"] * 7) == 0.0


def _vqa_annotation(question_id, question_type, answer_type, answers):
    return {"question_id": question_id, "question_type": question_type,
            "answer_type": answer_type,
            "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]}


VQA_ANNOTATIONS = [
    _vqa_annotation(1, "is the", "yes/no", ["yes"] * 10),
    _vqa_annotation(2, "how many", "number", ["2"] * 2 + ["3"] * 8),
    _vqa_annotation(3, "what is", "other", ["dog"] * 3 + ["cat"] * 7),
    _vqa_annotation(4, "what color", "other", ["don't"] + ["red"] * 9),
]
VQA_PREDICTIONS = {1: "Yes.", 2: "two", 3: "a dog.", 4: "dont"}


def test_vqa_accuracy_breakdown():
    result = vqa_accuracy(VQA_PREDICTIONS, VQA_ANNOTATIONS)
    # Per question: 1.0 (10 agree), 0.6 (2 agree), 0.9 (3 agree), 0.3 (1 agrees).
    assert result["accuracy"] == 70.0  # 100 * 2.8 / 4
    assert result["per_answer_type"] == {"yes/no": 100.0, "number": 60.0, "other": 60.0}
    assert result["per_question_type"] == {
        "is the": 100.0, "how many": 60.0, "what is": 90.0, "what color": 30.0}
    assert result["num_questions"] == 4


def test_vqa_accuracy_rounds_to_two_decimals():
    annotations = [_vqa_annotation(q, "what", "other", ["dog"] * 10) for q in (1, 2, 3)]
    result = vqa_accuracy({1: "dog", 2: "cat", 3: "cat"}, annotations)
    assert result["accuracy"] == 33.33  # round(100 * 1 / 3, 2)


# ---------------------------------------------------------------- GQA

GQA_QUESTIONS = {
    "q1": {"answer": "yes", "isBalanced": True,
           "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"}},
    "q2": {"answer": "table", "isBalanced": True,
           "types": {"structural": "query", "semantic": "obj", "detailed": "objQuery"}},
    "q3": {"answer": "left", "isBalanced": True,
           "types": {"structural": "choose", "semantic": "rel", "detailed": "chooseRel"}},
    "q4": {"answer": "red", "isBalanced": True,
           "types": {"structural": "query", "semantic": "attr", "detailed": "colorQuery"}},
    "q5": {"answer": "no", "isBalanced": False,
           "types": {"structural": "verify", "semantic": "obj", "detailed": "exist"}},
}
GQA_PREDICTIONS = {"q1": "Yes.", "q2": "the table", "q3": "right", "q4": "red", "q5": "no"}


def test_gqa_breakdown():
    result = gqa_accuracy(GQA_PREDICTIONS, GQA_QUESTIONS)
    # q5 is unbalanced and not scored; q1, q2, q4 right after normalisation, q3 wrong.
    assert result["accuracy"] == 75.0                  # 3 / 4
    assert result["open"] == 100.0                     # query: q2, q4
    assert result["binary"] == 50.0                    # verify q1 right, choose q3 wrong
    assert result["per_structural_type"] == {"verify": 100.0, "query": 100.0, "choose": 0.0}
    assert result["per_semantic_type"] == {"attr": 100.0, "obj": 100.0, "rel": 0.0}
    assert result["num_questions"] == 4


def test_gqa_official_exact_match():
    result = gqa_accuracy(GQA_PREDICTIONS, GQA_QUESTIONS, normalize=False)
    assert result["accuracy"] == 25.0  # only "red" == "red" without normalisation


# ---------------------------------------------------------------- counting

@pytest.mark.parametrize("answer, count", [
    ("There are three dogs", 3),
    ("2 cats", 2),
    ("I see 12 birds and two cats", 12),  # the first number wins
    ("Twenty.", 20),
    ("someone is holding a dog", None),   # "one" only as a whole word
    ("no idea", None),
])
def test_extract_count(answer, count):
    assert extract_count(answer) == count


def test_counting_accuracy():
    predictions = {1: "There are three dogs", 2: "2 cats", 3: "I can't tell", 4: "four"}
    result = counting_accuracy(predictions, {1: 3, 2: 2, 3: 0, 4: 5})
    # right, right, no number (wrong), 4 != 5 (wrong): 2 / 4.
    assert result == {"accuracy": 50.0, "num_questions": 4, "num_without_number": 1}


def test_identification_accuracy():
    assert mentions_class("There is a Dog on the sofa.", "dog")
    assert not mentions_class("A hotdog stand.", "dog")
    assert mentions_class("a HOT  DOG with mustard", "hot dog")
    predictions = {1: "I see a Cat.", 2: "a bird", 3: "cats everywhere"}
    result = identification_accuracy(predictions, {1: "cat", 2: "bird", 3: "cat"})
    assert result == {"accuracy": 66.67, "num_questions": 3}  # "cats" is not "cat"


# ---------------------------------------------------------------- captions

@pytest.mark.parametrize("raw, tokens", [
    # Expected strings are Stanford PTBTokenizer 3.4.1 (-preserveLines -lowerCase) output
    # after pycocoevalcap's punctuation filter.
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("A bus that's red on a city street.", "a bus that 's red on a city street"),
    ("Some broccoli, rice and meat.", "some broccoli rice and meat"),
    ('a "no parking" sign', "a no parking sign"),
    ("a man (left) and a woman", "a man -lrb- left -rrb- and a woman"),
    ("it's 3:30 pm and a 1,000,000 $5.00 bill", "it 's 3:30 pm and a 1,000,000 $ 5.00 bill"),
    ("the dogs' toys: a flag of the u.s.", "the dogs toys a flag of the u.s."),
    ("two men...one woman. toys!!", "two men one woman toys !!"),
    ("we can't; i'm a 10-year-old", "we ca n't i 'm a 10-year-old"),
])
def test_ptb_tokenize(raw, tokens):
    assert ptb_tokenize(raw) == tokens


CAPTION_REFERENCES = {
    1: ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean.",
        "a person on a surf board riding a wave"],
    2: ["Two dogs playing with a frisbee in the grass.", "Two dogs are running on a field.",
        "A pair of dogs chase a red frisbee.", "dogs play in a grassy park",
        "Two brown dogs in a field."],
    3: ["A red double-decker bus driving down a street.", "A bus that's red on a city street."],
    4: ["A plate of food with broccoli and rice.", "Some broccoli, rice and meat on a white plate.",
        "A white plate topped with meat, rice, and vegetables.", "food on a plate"],
    5: ["A cat sleeping on a laptop keyboard.", "The cat is lying on the computer.",
        "a cat that is laying down on a laptop"],
}
CAPTION_PREDICTIONS = {
    1: "a man riding a wave on a surfboard",
    2: "two dogs playing with a frisbee in a field.",
    3: "A red bus driving down a city street",
    4: "a plate of food with rice and broccoli",
    5: "a cat laying on a laptop computer",
}
# pycocoevalcap 1.2 (pip, in a throwaway venv, Java 17): PTBTokenizer().tokenize on both
# sides, then Cider().compute_score -> 2.963957113655705 and
# Bleu(4).compute_score -> Bleu_4 0.6420547167749671; here both are x100.
PYCOCOEVALCAP_CIDER = 296.3957113655705
PYCOCOEVALCAP_BLEU_4 = 64.20547167749671


def test_caption_scores_match_pycocoevalcap():
    result = caption_scores(CAPTION_PREDICTIONS, CAPTION_REFERENCES)
    assert result["CIDEr"] == pytest.approx(PYCOCOEVALCAP_CIDER, rel=1e-12)
    assert result["Bleu_4"] == pytest.approx(PYCOCOEVALCAP_BLEU_4, rel=1e-12)
    assert result["num_images"] == 5


def test_cider_and_bleu_by_hand():
    references = {"a": ["a dog"], "b": ["a cat"]}
    candidates = {"a": "a dog", "b": "a cat"}
    # CIDEr: idf = log(2 images) - log(df). "a" is in both images: idf 0; "dog", "cat",
    # "a dog", "a cat" have idf log 2. Candidate == reference, so the 1- and 2-gram cosines
    # are 1; there are no 3- or 4-grams (cosine 0); equal lengths, no penalty.
    # Per image 10 * mean(1, 1, 0, 0) = 5.
    cider, per_image = cider_d(candidates, references)
    assert cider == pytest.approx(5.0)
    assert per_image == pytest.approx({"a": 5.0, "b": 5.0})
    # BLEU: 4/4 unigrams, 2/2 bigrams, 0/0 tri- and 4-grams, which the smoothing turns into
    # 1e-15 / 1e-9 = 1e-6 each: BLEU-4 = (1 * 1 * 1e-6 * 1e-6) ** (1/4) = 1e-3.
    assert bleu(candidates, references)[3] == pytest.approx(1e-3, rel=1e-6)


def test_bleu_brevity_penalty_uses_closest_reference():
    # Candidate of 2 words; references of 1 and 4 words: the closest is 1 (|1-2| < |4-2|),
    # so no brevity penalty: unigram precision 1/2 for "the cat" vs refs "cat" / "a big cat".
    assert bleu({0: "the cat"}, {0: ["cat", "a big cat sat"]}, n=1)[0] == pytest.approx(0.5)
    # With only the 4-word reference, BP = exp(1 - 4/2) and the precision is still 1/2.
    assert bleu({0: "the cat"}, {0: ["a big cat sat"]}, n=1)[0] == pytest.approx(
        0.5 * np.exp(-1.0))


# ---------------------------------------------------------------- retrieval

# 3 images, 2 texts each.
TEXT_TO_IMAGE = np.array([0, 0, 1, 1, 2, 2])
SIMS = np.array([
    [0.9, 0.1, 0.8, 0.2, 0.3, 0.0],   # image 0: its text 0 ranks first
    [0.7, 0.6, 0.5, 0.1, 0.2, 0.3],   # image 1: its best text (2) ranks third
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.05],  # image 2: its text 4 ranks first
])


def test_recall_from_similarities():
    result = retrieval_recall(SIMS, TEXT_TO_IMAGE)
    # i2t ranks (0-based) 0, 2, 0 -> R@1 2/3, R@5 = R@10 = 3/3.
    assert result["i2t_r1"] == pytest.approx(200 / 3)
    assert result["i2t_r5"] == result["i2t_r10"] == 100.0
    # t2i, per text column: ranks 0, 2, 1, 2, 0, 1 -> R@1 2/6; only 3 images, so R@5 = 100.
    assert result["t2i_r1"] == pytest.approx(100 / 3)
    assert result["t2i_r5"] == 100.0
    assert result["i2t_r_mean"] == pytest.approx((200 / 3 + 200) / 3)
    assert result["r_mean"] == pytest.approx(
        (result["i2t_r_mean"] + result["t2i_r_mean"]) / 2)


def test_recall_at_5_and_10():
    # 7 images, one text each; text 6's image ranks 7th (0.1 below six 0.5s).
    sims = np.eye(7)
    sims[:6, 6] = 0.5
    sims[6, 6] = 0.1
    result = recall_at_k(sims, sims.T, np.arange(7))
    assert result["t2i_r1"] == result["t2i_r5"] == pytest.approx(600 / 7)
    assert result["t2i_r10"] == 100.0
    assert result["i2t_r1"] == 100.0  # each image's own text is its row maximum


def _matching_itm(image_indices, text_indices):
    """An ITM head that is sure about every true pair."""
    return (TEXT_TO_IMAGE[text_indices] == image_indices).astype(float)


def test_itm_reranking_changes_top1():
    scores_i2t, scores_t2i = itm_rerank(SIMS, _matching_itm, k_test=3)
    # Image 1's ITC top 3 are texts 0, 1, 2 (0.7, 0.6, 0.5); ITM adds 1 to its own text 2,
    # which moves to the top; texts outside the top 3 get -100.
    np.testing.assert_allclose(scores_i2t[1], [0.7, 0.6, 1.5, -100, -100, -100])
    # Text 2's candidates are all 3 images; image 1 gets 0.5 + 1.
    np.testing.assert_allclose(scores_t2i[2], [0.8, 1.5, 0.3])
    result = retrieval_recall(SIMS, TEXT_TO_IMAGE, itm_score=_matching_itm, k_test=3)
    assert result["i2t_r1"] == result["t2i_r1"] == result["r_mean"] == 100.0
    # With k_test=2 image 1's texts are never re-scored: it still misses at R@1.
    result = retrieval_recall(SIMS, TEXT_TO_IMAGE, itm_score=_matching_itm, k_test=2)
    assert result["i2t_r1"] == pytest.approx(200 / 3)


def test_retrieval_rejects_bad_input():
    with pytest.raises(ValueError, match="images without any text"):
        retrieval_recall(SIMS, np.array([0, 0, 0, 0, 2, 2]))
    with pytest.raises(ValueError, match="one score per"):
        retrieval_recall(SIMS, TEXT_TO_IMAGE, itm_score=lambda i, t: np.zeros(1), k_test=3)


# ---------------------------------------------------------------- score() on files

def _write(path, data):
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def vqa_files(tmp_path):
    predictions = _write(tmp_path / "results.json",
                         [{"question_id": q, "answer": a} for q, a in VQA_PREDICTIONS.items()])
    annotations = _write(tmp_path / "annotations.json", {"annotations": VQA_ANNOTATIONS})
    questions = _write(tmp_path / "questions.json",
                       {"questions": [{"question_id": q, "question": "?"} for q in (1, 2, 3, 4)]})
    return predictions, annotations, questions


def test_score_vqa(vqa_files):
    result = score("vqav2", *vqa_files)
    assert result["task"] == "vqav2"
    assert result["accuracy"] == 70.0
    assert result["per_answer_type"]["number"] == 60.0
    json.dumps(result)  # JSON-able
    assert score("okvqa", vqa_files[0], vqa_files[1])["accuracy"] == 70.0


def test_score_gqa(tmp_path):
    predictions = _write(tmp_path / "gqa_pred.json",
                         [{"questionId": q, "prediction": p} for q, p in GQA_PREDICTIONS.items()])
    questions = _write(tmp_path / "testdev_balanced_questions.json", GQA_QUESTIONS)
    result = score("gqa", predictions, questions)
    assert result["accuracy"] == 75.0
    assert result["per_semantic_type"]["rel"] == 0.0


def test_score_coco_caption(tmp_path):
    predictions = _write(tmp_path / "captions.json",
                         [{"image_id": i, "caption": c} for i, c in CAPTION_PREDICTIONS.items()])
    annotations = _write(tmp_path / "coco_gt.json", {"annotations": [
        {"image_id": i, "id": 10 * i + j, "caption": c}
        for i, refs in CAPTION_REFERENCES.items() for j, c in enumerate(refs)]})
    result = score("coco_caption", predictions, annotations)
    assert result["CIDEr"] == pytest.approx(PYCOCOEVALCAP_CIDER, rel=1e-12)
    assert result["Bleu_4"] == pytest.approx(PYCOCOEVALCAP_BLEU_4, rel=1e-12)


def test_score_gvt_count(tmp_path):
    predictions = _write(tmp_path / "count_pred.json", [
        {"question_id": 1, "answer": "There are three dogs"}, {"question_id": 2, "answer": "none"}])
    counts = _write(tmp_path / "counts.json",
                    [{"question_id": 1, "count": 3}, {"question_id": 2, "count": 0}])
    # "none" is no number: wrong. 1 / 2.
    assert score("gvt_count", predictions, counts)["accuracy"] == 50.0


def test_score_errors(tmp_path, vqa_files):
    predictions, annotations, questions = vqa_files
    with pytest.raises(ValueError, match="predictions file not found: .*missing.json"):
        score("vqav2", str(tmp_path / "missing.json"), annotations)
    with pytest.raises(ValueError, match="unknown task 'vqa3'"):
        score("vqa3", predictions, annotations)
    broken = _write(tmp_path / "broken.json", {"questions": []})
    with pytest.raises(ValueError, match="broken.json: expected a JSON object holding the list"):
        score("vqav2", predictions, broken)
    (tmp_path / "not_json.json").write_text("{")
    with pytest.raises(ValueError, match="not_json.json is not valid JSON"):
        score("vqav2", str(tmp_path / "not_json.json"), annotations)

    extra = _write(tmp_path / "extra.json", [{"question_id": q, "answer": "yes"}
                                             for q in (1, 2, 3, 4, 99)])
    with pytest.raises(ValueError, match=r"extra.json: 1 prediction\(s\) for question_id .*\[99\]"):
        score("vqav2", extra, annotations)
    partial = _write(tmp_path / "partial.json", [{"question_id": 1, "answer": "yes"}])
    with pytest.raises(ValueError, match=r"partial.json: no prediction for 3 .*\[2, 3, 4\]"):
        score("vqav2", partial, annotations)
    twice = _write(tmp_path / "twice.json", [{"question_id": 1, "answer": "yes"}] * 2)
    with pytest.raises(ValueError, match="twice.json: question_id 1 appears more than once"):
        score("vqav2", twice, annotations)
    no_answer = _write(tmp_path / "no_answer.json", [{"question_id": 1}])
    with pytest.raises(ValueError, match="no_answer.json: entry 0 of the top level has no 'ans"):
        score("vqav2", no_answer, annotations)
    other_split = _write(tmp_path / "other_questions.json", {"questions": [{"question_id": 7}]})
    with pytest.raises(ValueError, match="other_questions.json and .* cover different"):
        score("vqav2", predictions, annotations, other_split)

    empty = _write(tmp_path / "empty.json", {"annotations": []})
    with pytest.raises(ValueError, match="empty.json: no question_id to score"):
        score("vqav2", predictions, empty)
    bad_count = _write(tmp_path / "bad_counts.json", [{"question_id": 1, "count": "three"}])
    with pytest.raises(ValueError, match="bad_counts.json: question_id 1 has count 'three'"):
        score("gvt_count", predictions, bad_count)
    gqa_predictions = _write(tmp_path / "gqa_pred.json", [{"questionId": "q1", "prediction": "no"}])
    untyped = _write(tmp_path / "untyped.json", {"q1": {"answer": "yes"}})
    with pytest.raises(ValueError, match="untyped.json: question 'q1' needs"):
        score("gqa", gqa_predictions, untyped)


# ---------------------------------------------------------------- LAVIS evaluation settings

@pytest.mark.parametrize("raw, cleaned", [
    ("What color is the cat?", "what color is the cat?"),  # "?" is not in LAVIS's set
    ('Is this a "hot dog"!  ', "is this a hot dog"),  # marks deleted, trailing spaces dropped
    ("How many (red) circles: 2.5~ ", "how many red circles 25"),
    ("Why?  Because", "why?  because"),  # inner spacing kept (pre_question only strips the end)
])
def test_clean_question_is_lavis_pre_question(raw, cleaned):
    from xformer_jax.data.transforms import clean_question
    assert clean_question(raw) == cleaned
    assert clean_question(" ".join(["w"] * 60)) == " ".join(["w"] * 50)


@pytest.mark.parametrize("answer, lemma", [
    ("dogs", "dog"), ("two dogs", "two dog"), ("berries", "berry"), ("boxes", "box"), ("benches", "bench"),
    ("tomatoes", "tomato"), ("leaves", "leaf"), ("knives", "knife"), ("children", "child"), ("horses", "horse"),
    ("glasses", "glass"), ("buses", "bus"), ("is", "be"), ("yes", "yes"), ("tennis", "tennis"),
    ("bus", "bus"), ("grass", "grass"), ("skiing", "skiing"), ("Giraffes", "giraffe"), ("cat", "cat"),
])
def test_okvqa_lemmatiser_hand_worked_cases(answer, lemma):
    from xformer_jax.eval.lemmatize import lemmatize_answer
    assert lemmatize_answer(answer) == lemma


def test_okvqa_scores_lemmatised_predictions_vqav2_does_not(tmp_path):
    """OK-VQA's ground truth is lemmatised: "Dogs." must match "dog" there, and only there."""
    annotations = _write(tmp_path / "a.json", {"annotations": [
        _vqa_annotation(1, "what are", "other", ["dog"] * 10),
        _vqa_annotation(2, "what are", "other", ["berry"] * 10)]})
    predictions = _write(tmp_path / "p.json", [{"question_id": 1, "answer": "Dogs."},
                                               {"question_id": 2, "answer": "berries"}])
    assert score("okvqa", predictions, annotations)["accuracy"] == 100.0
    assert score("vqav2", predictions, annotations)["accuracy"] == 0.0


def test_evaluate_modes_default_to_lavis_decoding_and_question_cleaning(monkeypatch, tmp_path):
    from launch import evaluate
    common = ["--workdir=w", "--image_root=r", "--out=o"]
    caption = evaluate._parser().parse_args(["caption", *common, "--images=i", "--annotations=a"])
    assert (caption.num_beams, caption.min_new_tokens, caption.max_new_tokens) == (5, 8, 30)  # LAVIS COCO caption
    vqa = evaluate._parser().parse_args(["vqa", *common, "--questions=q", "--annotations=a"])
    assert (vqa.num_beams, vqa.min_new_tokens, vqa.max_new_tokens, vqa.length_penalty) == (5, 1, 10, 0.0)
    assert vqa.clean_questions is True

    seen = []

    def generate_texts(captioner, image_paths, prompts, batch_size):
        seen.extend(prompts)
        return ["x"] * len(prompts)

    from xformer_jax.predict import benchmarks
    monkeypatch.setattr(benchmarks, "generate_texts", generate_texts)
    questions = [benchmarks.Question(1, "What is ON the table?", "a.png"), benchmarks.Question(2, 'Is it "red"!', "b.png")]
    benchmarks.answer(None, questions, 2, vqa.prompt, clean=vqa.clean_questions)
    assert seen == ["Question: what is on the table? Short answer:", "Question: is it red Short answer:"]
    seen.clear()
    raw = evaluate._parser().parse_args(["vqa", *common, "--questions=q", "--annotations=a", "--no-clean_questions"])
    benchmarks.answer(None, questions[:1], 1, raw.prompt, clean=raw.clean_questions)
    assert seen == ["Question: What is ON the table? Short answer:"]
