"""Faster, result-identical hot paths under IFEval's checkers (their cost on long replies).

1. NLTK's word tokenizer: ``word_tokenize`` splits a text into sentences and runs the Treebank
   tokenizer (thirty-odd regex passes) on each. That tokenizer is a pure function of the sentence,
   and the loose variants of a reply share almost all their sentences, so its answers are memoised
   per sentence (a copy is returned each time; callers may mutate it).

2. langdetect:

langdetect spends its time in two pure-Python loops: n-gram extraction (a per-character state
machine calling a Unicode-block lookup) and the per-sample probability update over 55 languages.
These replacements perform the same IEEE operations in the same order on the same values: a
memoised per-character ``normalize`` (a pure function of the character), local variables instead
of attribute look-ups, and the 55-language update as two NumPy element-wise operations (an add,
then a multiply, each correctly rounded exactly as the scalar code's) with the normalising sum
still taken sequentially in Python. The random draws are the same calls in the same order. So
every n-gram list and every probability is bit-identical to the original's
(``tests/test_ifeval.py`` compares them on multilingual text) and verdicts stay official.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

ORIGINAL: dict[str, Any] = {}
_CACHES: list[Any] = []  # objects with clear() / cache_clear(): emptied by clear_caches()


def register_cache(cache: Any) -> None:
    """Have clear_caches() empty this cache too."""
    _CACHES.append(cache)


def clear_caches() -> None:
    """Forget every memoised answer (benchmarks measure cold scoring with this)."""
    for cache in _CACHES:
        (getattr(cache, "cache_clear", None) or cache.clear)()


class _MemoTreebank:
    """NLTK's module-level Treebank tokenizer with per-sentence memoisation."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._cached = functools.lru_cache(maxsize=65536)(lambda text: tuple(inner.tokenize(text)))
        _CACHES.append(self._cached)

    def tokenize(self, text: str, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return self.inner.tokenize(text, *args, **kwargs)
        return list(self._cached(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def install() -> None:
    """Install the fast paths (idempotent)."""
    import nltk.tokenize
    from langdetect.detector import Detector
    from langdetect.utils.ngram import NGram

    if ORIGINAL:
        return
    ORIGINAL["treebank"] = nltk.tokenize._treebank_word_tokenizer
    nltk.tokenize._treebank_word_tokenizer = _MemoTreebank(ORIGINAL["treebank"])
    ORIGINAL["_extract_ngrams"] = Detector._extract_ngrams
    table: dict[int, str] = {}  # code point -> NGram.normalize(character), filled as characters appear
    words: dict[str, tuple[list[str], list[str]]] = {}  # normalised word -> (its n-grams, those of a space after it)

    def simulate(word: str, wmap: Any) -> tuple[list[str], list[str]]:
        """The original per-character state machine over one word and the space after it."""
        body: list[str] = []
        out = body
        grams = " "
        capital = False
        for ch in word + " ":
            if ch == " ":
                out = []  # n-grams ending in the space that follows the word
            last = grams[-1]
            if last == " ":
                grams = " "
                capital = False
            elif len(grams) >= 3:
                grams = grams[1:]
            grams += ch
            if ch.isupper():
                if last.isupper():
                    capital = True
            else:
                capital = False
            if capital:
                continue
            for n in (1, 2, 3):
                if len(grams) < n:
                    break
                w = grams[-n:]
                if w != " " and w in wmap:
                    out.append(w)
        return body, out

    def _extract_ngrams(self: Any) -> list[str]:
        # After normalisation a space always resets the state machine, so the n-grams of a text are
        # those of its words in order, each followed by those of the space after it (if any): the
        # same list the character loop builds, computed once per distinct word.
        wmap = self.word_lang_prob_map
        text = self.text
        for ch in set(text):
            if ord(ch) not in table:
                table[ord(ch)] = NGram.normalize(ch)
        parts = text.translate(table).split(" ")
        last = len(parts) - 1
        result: list[str] = []
        for k, word in enumerate(parts):
            if not word:
                continue
            cached = words.get(word)
            if cached is None:
                cached = words[word] = simulate(word, wmap)
            result += cached[0]
            if k < last:
                result += cached[1]
        return result

    vectors: dict[str, np.ndarray] = {}  # n-gram -> its 55 language probabilities as an array
    _CACHES.extend([table, words, vectors])

    def _detect_block(self: Any) -> None:
        from langdetect.lang_detect_exception import ErrorCode, LangDetectException

        self.cleaning_text()
        ngrams = self._extract_ngrams()
        if not ngrams:
            raise LangDetectException(ErrorCode.CantDetectError, "No features in text.")
        if self.verbose:  # the original prints as it goes; keep its code path for that
            ORIGINAL["_detect_block"](self)
            return
        wmap = self.word_lang_prob_map
        for w in ngrams:
            if w not in vectors:
                vectors[w] = np.array(wmap[w], dtype=np.float64)
        n_lang = len(self.langlist)
        self.langprob = [0.0] * n_lang
        rng = self.random
        rng.seed(self.seed)
        choice = rng.choice
        tmp = np.empty(n_lang, dtype=np.float64)
        add, multiply = np.add, np.multiply
        for _ in range(self.n_trial):
            prob = np.array(self._init_probability(), dtype=np.float64)
            alpha = self.alpha + rng.gauss(0.0, 1.0) * self.ALPHA_WIDTH
            weight = alpha / self.BASE_FREQ
            i = 0
            while True:
                # prob[i] *= weight + p_word[i], for all languages at once (no temporaries allocated)
                multiply(prob, add(weight, vectors[choice(ngrams)], out=tmp), out=prob)
                if i % 5 == 0:
                    sump = sum(prob.tolist())  # sequential, as the original's sum()
                    prob /= sump
                    maxp = float(prob.max()) if prob.max() > 0.0 else 0.0
                    if maxp > self.CONV_THRESHOLD or i >= self.ITERATION_LIMIT:
                        break
                i += 1
            values = prob.tolist()
            for j in range(n_lang):
                self.langprob[j] += values[j] / self.n_trial

    ORIGINAL["_detect_block"] = Detector._detect_block
    Detector._extract_ngrams = _extract_ngrams
    Detector._detect_block = _detect_block
