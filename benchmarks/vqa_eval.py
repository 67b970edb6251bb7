"""VQA accuracy with the EvalAI answer processor, as LLaVA's `m4c_evaluator.py` (from MMF) computes it.

Reproduced behaviour for behaviour, quirks included, because TextVQA numbers are only comparable
when every normalisation step matches:

- the period-stripping regex is called as `sub("", text, re.UNICODE)`, i.e. with the flag value
  as the `count` argument, so at most 32 periods are removed;
- its pattern starts with `(?!<=\\d)`, a negative LOOKAHEAD for the literal "<=" (a typo for a
  lookbehind), so in effect a period is removed whenever no digit follows it;
- the punctuation test looks at the text as it was before any punctuation was replaced, and the
  "digit,digit" test can never fire because commas were already deleted one step earlier;
- "none" maps to "0" with the number words; the contraction table maps "somebody'd" to
  "somebodyd" (sic) and has capitalised keys that never match after lower-casing.

`TextVQAAccuracyEvaluator` runs the processor on the prediction AND on every ground-truth answer,
then scores the prediction against the leave-one-out sets of the processed answers.
"""

from __future__ import annotations

import re
from typing import Iterable

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}

NUMBER_MAP = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = ("a", "an", "the")

# Verbatim patterns of the reference (see the module docstring for what they really match).
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
PUNCTUATIONS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!")


def _word_tokenize(text: str) -> str:
    text = text.lower()
    text = text.replace(",", "").replace("?", "").replace("'s", " 's")
    return text.strip()


def _process_punctuation(in_text: str) -> str:
    out_text = in_text
    has_digit_comma = COMMA_STRIP.search(in_text) is not None
    for p in PUNCTUATIONS:
        # The test reads `in_text` (the text before this loop), not the text being edited.
        if (p + " " in in_text or " " + p in in_text) or has_digit_comma:
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    # re.UNICODE passed positionally is the `count` argument: at most 32 replacements.
    return PERIOD_STRIP.sub("", out_text, re.UNICODE)


def _process_digit_article(in_text: str) -> str:
    words = []
    for word in in_text.lower().split():
        word = NUMBER_MAP.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """EvalAI answer processor: the string both predictions and ground-truth answers are compared as."""
    text = _word_tokenize(text)
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _process_punctuation(text)
    return _process_digit_article(text)


def vqa_accuracy(prediction: str | None, answers: Iterable[str]) -> float:
    """Soft VQA accuracy: mean over the leave-one-out subsets of min(1, matches / 3).

    With 10 annotators, k matching answers give 0.0 / 0.3 / 0.6 / 0.9 / 1.0 for k = 0 / 1 / 2 / 3 / 4+.
    Float arithmetic follows the reference (min(1, k/3) summed, then divided by the count).
    """
    gt = [normalize_answer(str(a)) for a in answers]
    if prediction is None or not gt:
        return 0.0
    pred = normalize_answer(str(prediction))
    if pred not in gt:
        return 0.0
    accs = []
    for i in range(len(gt)):
        matches = sum(1 for j, a in enumerate(gt) if j != i and a == pred)
        accs.append(min(1, float(matches) / 3))
    return sum(accs) / len(accs)
