"""GVTBench-style object counting and multi-class identification accuracy.

The model answers in free form ("There are three dogs in the picture."), so a count is read
from the answer instead of comparing strings: the first integer or number word wins.
"""
from collections.abc import Mapping
import re

_NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen", "twenty",
)
_WORD_VALUES = {word: value for value, word in enumerate(_NUMBER_WORDS)}
_FIRST_NUMBER = re.compile(r"\b(\d+|" + "|".join(_NUMBER_WORDS) + r")\b")


def extract_count(answer: str) -> int | None:
    """The first integer or number word (zero..twenty) in `answer`; None when there is none."""
    match = _FIRST_NUMBER.search(answer.lower())
    if match is None:
        return None
    token = match.group(1)
    return int(token) if token.isdigit() else _WORD_VALUES[token]


def _percent(correct: list[bool]) -> float:
    """Share of True in percent, rounded to 2 decimals like the other accuracy scorers."""
    return round(100.0 * sum(correct) / len(correct), 2)


def counting_accuracy(predictions: Mapping[int, str], counts: Mapping[int, int]) -> dict:
    """Percent (2 decimals) of questions whose extracted count equals the true count.

    An answer without any number counts as wrong; `num_without_number` reports how many.
    """
    extracted = {question_id: extract_count(predictions[question_id]) for question_id in counts}
    return {
        "accuracy": _percent([extracted[qid] == count for qid, count in counts.items()]),
        "num_questions": len(counts),
        "num_without_number": sum(value is None for value in extracted.values()),
    }


def mentions_class(answer: str, class_name: str) -> bool:
    """Whether `answer` names `class_name` as a whole word (or phrase), ignoring case."""
    pattern = r"\b" + r"\s+".join(map(re.escape, class_name.split())) + r"\b"
    return re.search(pattern, answer, flags=re.IGNORECASE) is not None


def identification_accuracy(predictions: Mapping[int, str], class_names: Mapping[int, str]) -> dict:
    """Multi-class identification: percent (2 decimals) of answers that name the true class."""
    correct = [mentions_class(predictions[qid], name) for qid, name in class_names.items()]
    return {"accuracy": _percent(correct), "num_questions": len(correct)}
