"""Answer lemmatisation for OK-VQA scoring: a small self-contained rule set.

OK-VQA's ground-truth answers are stemmed / lemmatised ("leaves" -> "leaf", "dogs" -> "dog"), so an
unprocessed prediction "dogs" never matches; BLIP-2 (LAVIS blip2_opt `_lemmatize`, spaCy) lemmatises
nouns and verbs of each predicted answer before the VQA scorer sees it. spaCy and its English model
are too heavy for the core install, so these rules cover the forms that change short answers most:
regular and irregular plural nouns and the inflections of be / have / do. Words ending in -ing / -ed are
left alone (spaCy decides those by part of speech in context), as are the words in KEEP, which end in
"s" without being plurals.
"""
import re

IRREGULAR = {
    "men": "man", "women": "woman", "children": "child", "feet": "foot", "teeth": "tooth", "mice": "mouse",
    "geese": "goose", "knives": "knife", "wives": "wife", "lives": "life", "leaves": "leaf", "loaves": "loaf",
    "halves": "half", "shelves": "shelf", "wolves": "wolf", "calves": "calf", "scarves": "scarf",
    "thieves": "thief", "oxen": "ox", "cacti": "cactus", "clothes": "cloth", "buses": "bus", "gases": "gas",
    "lenses": "lens", "circuses": "circus", "viruses": "virus", "octopuses": "octopus", "campuses": "campus",
    "is": "be", "are": "be", "was": "be", "were": "be", "been": "be", "am": "be",
    "has": "have", "had": "have", "does": "do", "did": "do",
}
KEEP = frozenset({
    "yes", "this", "his", "its", "hers", "ours", "yours", "theirs", "us", "as", "was", "thus", "plus", "always",
    "perhaps", "news", "series", "species", "physics", "mathematics", "athletics", "gymnastics", "politics",
    "economics", "tennis", "christmas", "bus", "gas", "lens", "iris", "police", "texas", "paris", "vegas", "las",
    "chess", "dress", "grass", "glass",
    "boss", "class", "mattress", "canvas", "atlas", "bias", "chaos", "cosmos", "octopus", "cactus", "virus",
    "bonus", "campus", "circus", "status", "walrus", "asparagus", "hummus", "citrus", "analysis", "basis",
    "crisis", "oasis", "axis", "thesis", "diagnosis", "hippopotamus", "rhinoceros", "asbestos", "overseas",
    "sometimes", "nevertheless", "less", "unless", "business", "wireless", "homeless", "countless",
})
_SIBILANT_ES = re.compile(r"(ss|sh|ch|x|z)es$")


def lemmatize_word(word: str) -> str:
    """The lemma of one lowercase word under the rules above (the word itself when no rule applies)."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    if word in KEEP or len(word) <= 3 or not word.endswith("s") or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"  # berries -> berry
    if _SIBILANT_ES.search(word) or word.endswith("oes"):
        return word[:-2]  # boxes -> box, benches -> bench, tomatoes -> tomato
    return word[:-1]  # dogs -> dog, bananas -> banana


def lemmatize_answer(answer: str) -> str:
    """Each whitespace-separated word of a lowercased answer lemmatised, spacing normalised."""
    return " ".join(lemmatize_word(word) for word in answer.lower().split())
