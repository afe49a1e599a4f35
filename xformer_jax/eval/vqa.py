"""VQAv2 / OK-VQA accuracy, reproducing the official VQA evaluation (vqaEval.py of the VQA API).

Every published VQAv2 / OK-VQA number comes from that script, so its answer normalisation and
its rounding are reproduced as they are, quirks included, rather than "improved".
"""
from collections.abc import Mapping, Sequence
import re

# Official contractions table: an answer word missing its apostrophe is mapped to the
# spelling the human answers use. Keys with capitals can never match (answers are
# lowercased first); they are kept so that the table is the official one.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                ">", "<", "@", "`", ",", "?", "!"]
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official pattern meant "a period not between digits" but its look-behind is written
# as a look-ahead, so it removes every period not followed by a digit ("3.5" survives,
# "5." does not).
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The official call passes re.UNICODE (== 32) where `count` goes, so at most 32 periods
# are removed from one answer.
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """Drop or space out punctuation as the official tool does.

    A mark that touches a space (or any mark, once the text has a comma between digits,
    "1,000") is deleted; a mark inside a word becomes a space ("black/white" -> "black white").
    Whether a mark touches a space is decided on the input text, not the text as edited.
    """
    out = text
    delete_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in _PUNCTUATION:
        if delete_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Lowercase, write zero..ten (and "none") as digits, drop articles, restore apostrophes."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """The full normalisation the official tool applies to a predicted answer."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def answer_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one predicted answer against the (usually 10) human answers.

    Averaged over the leave-one-out subsets of the humans: min(1, matches / 3) in each, so
    1, 2, 3, 4+ agreeing humans give 0.3, 0.6, 0.9, 1.0. As in the official tool, human
    answers only go through punctuation processing, and only when they are not all equal;
    the comparison is then exact.
    """
    predicted = normalize_answer(prediction)
    humans = list(human_answers)
    if len(set(humans)) > 1:
        humans = [process_punctuation(answer) for answer in humans]
    per_subset = []
    for left_out in range(len(humans)):
        matches = sum(
            1 for index, answer in enumerate(humans) if index != left_out and answer == predicted)
        per_subset.append(min(1, float(matches) / 3))
    return float(sum(per_subset)) / len(per_subset)


def _percent(accuracies: list[float]) -> float:
    """Mean in percent, rounded to 2 decimals with the official arithmetic and rounding."""
    return round(100 * float(sum(accuracies)) / len(accuracies), 2)


def vqa_accuracy(predictions: Mapping[int, str], annotations: Sequence[Mapping]) -> dict:
    """Overall, per-answer-type and per-question-type accuracy in percent (2 decimals).

    `annotations` are the entries of the official annotation file (each with question_id,
    question_type, answer_type and answers [{"answer": ...}]); `predictions` maps every one
    of their question ids to the predicted answer.
    """
    overall: list[float] = []
    per_answer_type: dict[str, list[float]] = {}
    per_question_type: dict[str, list[float]] = {}
    for annotation in annotations:
        accuracy = answer_accuracy(
            predictions[annotation["question_id"]],
            [answer["answer"] for answer in annotation["answers"]])
        overall.append(accuracy)
        per_answer_type.setdefault(annotation["answer_type"], []).append(accuracy)
        per_question_type.setdefault(annotation["question_type"], []).append(accuracy)
    return {
        "accuracy": _percent(overall),
        "per_answer_type": {name: _percent(accs) for name, accs in per_answer_type.items()},
        "per_question_type": {name: _percent(accs) for name, accs in per_question_type.items()},
        "num_questions": len(overall),
    }
