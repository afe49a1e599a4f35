"""COCO caption CIDEr-D and BLEU-4, reproducing the COCO caption evaluation (pycocoevalcap).

Published captioning numbers come from pycocoevalcap, whose tokenizer runs Stanford's
PTBTokenizer in Java. `ptb_tokenize` re-implements what that tokenizer does to ordinary
caption text, so no Java is needed; the two scorers then follow pycocoevalcap's arithmetic
step by step (its quirks included), so the same captions give the same numbers.
"""
from collections import Counter
from collections.abc import Mapping, Sequence
import math
import re

# Tokens pycocoevalcap drops after PTB tokenisation. The bracket names are upper case there
# while the tokenizer runs with -lowerCase, so "-lrb-" etc. are never dropped; that is kept.
_DROPPED_TOKENS = frozenset(
    {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
     "--", "...", ";"})
# Brackets become PTB's names, double quotes and backticks separate (and dropped) tokens.
_SPLIT_MARKS = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ",
                "{": " -lcb- ", "}": " -rcb- ", '"': " '' ", "`": " ` "}
_SPLIT_SYMBOLS = re.compile(r"([$%*=+<>;]|\.\.\.|(?<!\d),|,(?!\d))")
_TRAILING_PUNCT = re.compile(r"(\.\.\.|[?!]+|[.,;:'])$")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "inc", "ltd"})
_ACRONYM = re.compile(r"^(?:[a-z]\.)+[a-z]$")
# A leading apostrophe that starts a clitic or an elision is part of the token, not a quote.
_APOSTROPHE_WORD = re.compile(r"'(s|re|ve|ll|d|m|em|n'|\d.*)$")
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "wanna": ["wan", "na"],
                "gotta": ["got", "ta"]}


def _split_word(word: str) -> list[str]:
    """PTB tokens of one whitespace-separated word (brackets and quotes already split off)."""
    trailing = []
    while (match := _TRAILING_PUNCT.search(word)) and match.start() > 0:
        core = word[:match.start()]
        if match.group(1) == "." and (_ACRONYM.match(core) or core in _ABBREVIATIONS):
            break  # "u.s." and "mr." keep their period
        if match.group(1) == "'" and _APOSTROPHE_WORD.match(word):
            break  # "'n'" is a word, not a quoted "n"
        trailing.insert(0, match.group(1))
        word = core
    leading = []
    if word.startswith("'") and len(word) > 1 and not _APOSTROPHE_WORD.match(word):
        leading, word = ["'"], word[1:]
    if word in _SPLIT_WORDS:
        middle = _SPLIT_WORDS[word]
    elif match := _CLITIC.match(word):
        middle = [match.group(1), match.group(2)]
    else:
        middle = [word]
    return leading + middle + trailing


def ptb_tokenize(caption: str) -> str:
    """Lowercased PTB tokens, space-joined, without the punctuation pycocoevalcap drops.

    Matches Stanford PTBTokenizer (-lowerCase) followed by pycocoevalcap's punctuation
    filter on ordinary caption text: sentence punctuation, quotes, brackets, clitics
    ("don't" -> "do n't"), hyphenated words and numbers ("1,000", "3.5"). Rare elisions
    that PTB splits specially ("y'all", "'tis") are left whole.
    """
    text = caption.lower().replace("\n", " ")
    for mark, spaced in _SPLIT_MARKS.items():
        text = text.replace(mark, spaced)
    tokens = []
    for word in _SPLIT_SYMBOLS.sub(r" \1 ", text).split():
        tokens.extend(_split_word(word))
    return " ".join(token for token in tokens if token not in _DROPPED_TOKENS)


def _ngram_counts(sentence: str, n: int) -> Counter:
    """Counts of the 1..n-grams of a tokenised sentence."""
    words = sentence.split()
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1)
                   for i in range(len(words) - k + 1))


def _tfidf(counts: Counter, document_frequency: Counter, log_num_images: float, n: int):
    """Per-order tf-idf vectors, their norms, and the "length" CIDEr's penalty compares.

    As in pycocoevalcap, that length is the number of bigrams, not of words.
    """
    vectors = [dict() for _ in range(n)]
    norms = [0.0] * n
    for ngram, term_frequency in counts.items():
        order = len(ngram) - 1
        weight = float(term_frequency) * (
            log_num_images - math.log(max(1.0, document_frequency[ngram])))
        vectors[order][ngram] = weight
        norms[order] += weight ** 2
    length = sum(count for ngram, count in counts.items() if len(ngram) == 2)
    return vectors, [math.sqrt(norm) for norm in norms], length


def cider_d(candidates: Mapping[object, str], references: Mapping[object, Sequence[str]],
            n: int = 4, sigma: float = 6.0) -> tuple[float, dict]:
    """Corpus CIDEr-D (pycocoevalcap's "CIDEr", a fraction: 1.0 means 100) and per-image scores.

    Takes tokenised text (see `ptb_tokenize`). Document frequencies come from the references
    of exactly the images scored; candidate n-gram weights are clipped by the reference's,
    each order's cosine is damped by exp(-(len_c - len_r)^2 / (2 sigma^2)); the mean over
    orders and references is multiplied by 10.
    """
    image_ids = list(references)
    reference_counts = {image_id: [_ngram_counts(ref, n) for ref in references[image_id]]
                        for image_id in image_ids}
    document_frequency = Counter()
    for counts in reference_counts.values():
        document_frequency.update(set().union(*counts))
    log_num_images = math.log(float(len(image_ids)))
    gaussian_denominator = 2 * sigma ** 2
    per_image = {}
    for image_id in image_ids:
        vec, norm, length = _tfidf(
            _ngram_counts(candidates[image_id], n), document_frequency, log_num_images, n)
        total = [0.0] * n
        for ref_counts in reference_counts[image_id]:
            ref_vec, ref_norm, ref_length = _tfidf(
                ref_counts, document_frequency, log_num_images, n)
            penalty = math.e ** (-(float(length - ref_length) ** 2) / gaussian_denominator)
            for order in range(n):
                ref_weights = ref_vec[order]
                dot = sum(min(weight, ref_weights.get(ngram, 0.0)) * ref_weights.get(ngram, 0.0)
                          for ngram, weight in vec[order].items())
                if norm[order] != 0 and ref_norm[order] != 0:
                    dot /= norm[order] * ref_norm[order]
                total[order] += dot * penalty
        per_image[image_id] = sum(total) / n / len(references[image_id]) * 10.0
    return sum(per_image.values()) / len(per_image), per_image


def bleu(candidates: Mapping[object, str], references: Mapping[object, Sequence[str]],
         n: int = 4) -> list[float]:
    """Corpus BLEU-1..n as pycocoevalcap's Bleu(n) computes it (fractions, not percent).

    Takes tokenised text. Clipped n-gram matches and candidate n-gram counts are summed over
    the corpus; the reference length of each image is the one closest to the candidate's
    (the shorter on a tie); 1e-15 / 1e-9 added to numerators / denominators keep empty
    counts finite; the brevity penalty applies when the corpus candidate length is shorter.
    """
    tiny, small = 1e-15, 1e-9
    correct, guessed = [0] * n, [0] * n
    candidate_length = reference_length = 0
    for image_id, refs in references.items():
        words = candidates[image_id].split()
        max_ref_counts = Counter()
        for ref in refs:
            max_ref_counts |= _ngram_counts(ref, n)
        for ngram, count in _ngram_counts(candidates[image_id], n).items():
            correct[len(ngram) - 1] += min(max_ref_counts[ngram], count)
        for order in range(n):
            guessed[order] += max(0, len(words) - order)
        candidate_length += len(words)
        reference_length += min((abs(len(ref.split()) - len(words)), len(ref.split()))
                                for ref in refs)[1]
    scores, product = [], 1.0
    for order in range(n):
        product *= float(correct[order] + tiny) / (guessed[order] + small)
        scores.append(product ** (1.0 / (order + 1)))
    ratio = (candidate_length + tiny) / (reference_length + small)
    if ratio < 1:
        scores = [score * math.exp(1 - 1 / ratio) for score in scores]
    return scores


def caption_scores(predictions: Mapping[object, str],
                   references: Mapping[object, Sequence[str]]) -> dict:
    """CIDEr (CIDEr-D) and Bleu_4 of raw captions, both x100 as in the BLIP-2 paper tables.

    pycocoevalcap prints them as fractions (CIDEr 1.458 is the paper's 145.8).
    """
    candidates = {image_id: ptb_tokenize(predictions[image_id]) for image_id in references}
    tokenized_refs = {image_id: [ptb_tokenize(ref) for ref in refs]
                      for image_id, refs in references.items()}
    cider, _ = cider_d(candidates, tokenized_refs)
    return {
        "CIDEr": 100.0 * cider,
        "Bleu_4": 100.0 * bleu(candidates, tokenized_refs)[3],
        "num_images": len(references),
    }
