"""The answer contract: where a completion's reasoning ends, what it answered, and what to score.

One reader serves the trainer (rollouts, anchor traces), the rewards and the evaluation, so every figure downstream
(accuracy, the stated rate, majority vote, the PRG target) reads answers the same way.

* A final-answer *statement* is a match of ``answer_pattern`` (default ``"The answer is"``). Its answer is read in the
  *segment* that runs from the end of the match (or from the start of group 1, for a pattern with a group) to the
  end of the statement's sentence (``.``, ``!`` or ``?`` followed by whitespace, or a newline; leading whitespace and
  ``:`` are skipped first).
* Options mode: the answer is the single standalone uppercase option letter of the row's options in the segment:
  bare (``B``), in ``(B)``, ``**B**``, ``B)`` or after ``option``. Never the first character of a word
  (``cholera`` is not C), never an article (``A vitamin deficiency`` is not A), never a lowercase letter. Two
  different option letters (``B or C``) mean: not stated.
* Options mode, when no letter is read: a segment that is exactly one option's text (case, runs of spaces and a
  final period normalised) reads as that option ("The answer is 71." for the option "D. 71"); a text that matches no
  option, or several, is not stated.
* Raw mode: the answer is the segment's text, stripped.
* The last statement with a valid answer wins (a statement cut off by ``max_completion_length`` falls back to an
  earlier complete one). The reasoning is every token before that statement (before the last statement when none
  is valid; the whole completion when there is none); the statement itself is never a step, else ``p_K`` would
  trivially be ~1.
* Options mode with no stated answer: the model's *forced* choice (its top option after the trigger) is scored and
  flagged ``answer_forced`` (:meth:`ParsedCompletion.fill`).

The options of a row are its own (an ``options`` column: a dict keyed by letter, or a list) or ``answer_options``;
``answer_probability="auto"`` scores rows with options in options mode and the others raw.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .constants import ANSWER_PROBABILITIES, DEFAULT_ANSWER_PATTERN, DEFAULT_STEP_SEPARATOR
from .prg import prg_score, split_steps

__all__ = [
    "AnswerExtractor",
    "ParsedCompletion",
    "Statement",
    "find_statement",
    "option_letters",
    "option_texts",
    "read_answer",
    "whitespace_token_ids",
]

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
_LETTER = re.compile(r"(?<![A-Za-z0-9_'\u2019-])([A-Z])(?![A-Za-z0-9_'\u2019-])")
# "A" followed by a lowercase word is an article ("A vitamin deficiency"), unless the word joins options ("A or B").
_ARTICLE = re.compile(r"\s+(?!(?:or|and|nor|vs|versus)\b)[a-z]")


def option_letters(options: Any, default: Sequence[str] | None = None) -> list[str] | None:
    """The option letters of a row's ``options`` value (dict keyed by letter, list of texts, or list of
    ``{"key", "value"}`` dicts), else ``default``."""
    if isinstance(options, dict) and options:
        return sorted(str(k) for k, v in options.items() if v is not None)
    if isinstance(options, (list, tuple)) and options:
        if isinstance(options[0], dict) and "key" in options[0]:
            return [str(o["key"]) for o in options]
        return [chr(ord("A") + i) for i in range(len(options))]
    return list(default) if default else None


def option_texts(options: Any) -> dict[str, str] | None:
    """``{letter: text}`` of a row's ``options`` value (dict keyed by letter, list of texts, or list of
    ``{"key", "value"}`` dicts); ``None`` when the row has no option texts."""
    if isinstance(options, dict) and options:
        return {str(k): str(v) for k, v in options.items() if v is not None}
    if isinstance(options, (list, tuple)) and options:
        if isinstance(options[0], dict) and "key" in options[0]:
            return {str(o["key"]): str(o.get("value", "")) for o in options}
        return {chr(ord("A") + i): str(t) for i, t in enumerate(options)}
    return None


def _normalise_text(text: str) -> str:
    """Case folded, runs of whitespace made one space, stripped, one final period dropped."""
    text = " ".join(text.split()).casefold()
    return text[:-1].rstrip() if text.endswith(".") else text


def _option_by_text(segment: str, texts: dict[str, str] | None, letters: Sequence[str]) -> str | None:
    """The option whose text the whole segment is, when exactly one is."""
    if not texts:
        return None
    said = _normalise_text(segment)
    if not said:
        return None
    found = [letter for letter in letters if letter in texts and _normalise_text(texts[letter]) == said]
    return found[0] if len(found) == 1 else None


def _segment(text: str, match: re.Match) -> tuple[int, int]:
    """Where the statement's answer segment runs: from its answer position to the end of its sentence."""
    start = match.start(1) if match.re.groups and match.start(1) >= 0 else match.end()
    while start < len(text) and (text[start].isspace() or text[start] == ":"):
        start += 1
    end = _SENTENCE_END.search(text, start)
    return start, end.start() if end else len(text)


def _letter_in(segment: str, letters: Sequence[str]) -> tuple[str | None, int | None]:
    """The one option letter the segment names and where (its last mention), or ``(None, None)``."""
    found: dict[str, int] = {}
    for m in _LETTER.finditer(segment):
        letter = m.group(1)
        if letter == "A" and _ARTICLE.match(segment, m.end()):
            continue
        if letter in letters:
            found[letter] = m.start(1)
    return next(iter(found.items())) if len(found) == 1 else (None, None)


@dataclass(frozen=True)
class Statement:
    """Where the winning final-answer statement of a text lies (character offsets).

    Attributes:
        answer: the stated answer (an option letter, or the raw text), ``None`` when not stated.
        start: where the statement (the match of ``answer_pattern``) starts; ``None`` without a statement.
        end: where its answer segment ends (before the sentence's closing punctuation).
        letter: where the option letter stands (options mode, a letter read); ``None`` otherwise.
    """

    answer: str | None
    start: int | None
    end: int | None = None
    letter: int | None = None


def find_statement(
    text: str,
    pattern: str | re.Pattern,
    letters: Sequence[str] | None,
    texts: dict[str, str] | None = None,
) -> Statement:
    """The winning statement of ``text`` under the contract above (:func:`read_answer`), with where it lies."""
    pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
    matches = list(pattern.finditer(text))
    for match in reversed(matches):
        seg_start, seg_end = _segment(text, match)
        segment = text[seg_start:seg_end]
        letter_at = None
        if letters is not None:
            answer, letter_at = _letter_in(segment, letters)
            if answer is None:
                answer = _option_by_text(segment, texts, letters)
        else:
            answer = segment.strip() or None
        if answer is not None:
            return Statement(answer, match.start(), seg_end, None if letter_at is None else seg_start + letter_at)
    return Statement(None, matches[-1].start() if matches else None)


def read_answer(
    text: str,
    pattern: str | re.Pattern,
    letters: Sequence[str] | None,
    texts: dict[str, str] | None = None,
) -> tuple[str | None, int | None]:
    """The stated answer of ``text`` under the contract above, and the character where its statement starts.

    ``texts`` (options mode): ``{letter: option text}``, to read a statement that names an option by its text.

    Returns ``(answer, start)``: ``answer`` is an option letter (``letters`` given) or the raw answer text, ``None``
    when not stated; ``start`` is where the winning statement starts (the last statement when none is valid,
    ``None`` when there is no statement).
    """
    statement = find_statement(text, pattern, letters, texts)
    return statement.answer, statement.start


def whitespace_token_ids(tokenizer: Any) -> frozenset[int]:
    """The ids of the tokens whose text is whitespace only (cached on the tokenizer). Branches are inserted before
    such tokens, so that each branch sees the model's own context followed by the trigger."""
    cached = getattr(tokenizer, "_hytuning_whitespace_ids", None)
    if cached is None:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        cached = frozenset(i for i, t in enumerate(texts) if t and not t.strip())
        try:
            tokenizer._hytuning_whitespace_ids = cached
        except AttributeError:  # pragma: no cover - a tokenizer that refuses attributes
            pass
    return cached


@dataclass
class ParsedCompletion:
    """What :meth:`AnswerExtractor.parse` read from one completion."""

    text: str
    answer: str | None  # the stated answer (a valid letter in options mode), else None
    answer_ids: list[int] | None  # tokens to score (raw), or the stated option's first token (options)
    option_ids: list[int] | None  # the options' first tokens (options mode)
    letters: list[str] | None
    spans: list[tuple[int, int]] | None  # reasoning steps; None when there is nothing to score
    reasoning_end: int | None = None  # the reasoning is completion_ids[:reasoning_end] (statement, EOS excluded)
    statement: tuple[int, int] | None = None  # token span [start, end) of the stated answer's statement
    answer_position: int | None = None  # the token of the stated option letter in the completion
    statement_option_ids: list[int] | None = None  # the options' tokens in the form that letter was written

    def fill(self, record: Any, aggregation: str = "monotone") -> Any:
        """Complete a scored :class:`~hytuning_trl.scoring.RolloutStats` with the text, the answer (the forced choice,
        flagged ``answer_forced``, where none was stated in options mode) and its PRG; returns the record."""
        record.text = self.text
        record.reasoning_end = self.reasoning_end
        record.statement = self.statement
        record.answer_position = self.answer_position
        record.statement_option_ids = self.statement_option_ids
        record.answer = self.answer
        record.answer_forced = False
        if record.answer_logprobs is not None:
            if self.option_ids is not None and self.answer is None:
                record.answer = self.letters[record.answer_index]
                record.answer_forced = True
            record.prg = prg_score(record.answer_logprobs, aggregation)
        return record


class AnswerExtractor:
    """Reads completions under the answer contract, with the settings of a :class:`HyTuningConfig` (or the same
    names given directly).

    Example::

        extractor = AnswerExtractor(tokenizer, answer_options=["A", "B", "C", "D"])
        extractor.parse(tokenizer("...\\nThe answer is **B**.")["input_ids"]).answer  # 'B'
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        answer_pattern: str = DEFAULT_ANSWER_PATTERN,
        step_separator: str = DEFAULT_STEP_SEPARATOR,
        prg_max_steps: int = 16,
        answer_options: Sequence[str] | None = None,
        answer_probability: str = "auto",
        special_ids: Sequence[int] = (),
    ):
        if answer_probability not in ANSWER_PROBABILITIES:
            raise ValueError(
                f"Unknown answer_probability={answer_probability!r}; allowed: {', '.join(ANSWER_PROBABILITIES)}."
            )
        self.tokenizer = tokenizer
        self.pattern = re.compile(answer_pattern)
        self.step_separator = step_separator
        self.prg_max_steps = prg_max_steps
        self.answer_options = list(answer_options) if answer_options else None
        self.answer_probability = answer_probability
        self.special_ids = {i for i in special_ids if i is not None}
        self._text_cache: dict[int, str] = {}
        self._option_cache: dict[tuple[str, ...], list[int]] = {}  # (prefix, *letters)

    @classmethod
    def from_config(cls, tokenizer: Any, args: Any, special_ids: Sequence[int] = ()) -> AnswerExtractor:
        return cls(
            tokenizer,
            answer_pattern=args.answer_pattern,
            step_separator=args.step_separator,
            prg_max_steps=args.prg_max_steps,
            answer_options=args.answer_options,
            answer_probability=args.answer_probability,
            special_ids=special_ids,
        )

    def option_ids(self, letters: Sequence[str], prefix: str = " ") -> list[int]:
        """First token of ``prefix + letter`` for each option (``" B"`` after a trigger; ``prefix=""`` for a letter
        written after a bracket or asterisks); they must differ."""
        key = (prefix, *letters)
        if key not in self._option_cache:
            ids = [self.tokenizer(prefix + letter, add_special_tokens=False)["input_ids"][0] for letter in letters]
            if len(set(ids)) != len(ids):
                raise ValueError(
                    f"The options {list(letters)} do not start with distinct tokens; PRG cannot tell them apart."
                )
            self._option_cache[key] = ids
        return self._option_cache[key]

    def letters_for(self, options: Any = None) -> list[str] | None:
        """The option letters a row is scored with (``None``: raw mode)."""
        if self.answer_probability == "raw":
            return None
        letters = option_letters(options, self.answer_options)
        if letters is None and self.answer_probability == "options":
            raise ValueError(
                "answer_probability='options' needs option letters: set `answer_options` (e.g. ['A', 'B', 'C', 'D']) "
                "or give the rows an `options` column."
            )
        return letters

    def _token_at_char(self, completion_ids: Sequence[int], char_start: int) -> int:
        """The first token whose decoded prefix reaches past ``char_start`` (binary search over prefixes)."""
        lo, hi = 0, len(completion_ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self.tokenizer.decode(completion_ids[: mid + 1], skip_special_tokens=True)) > char_start:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def parse(
        self, completion_ids: Sequence[int], options: Any = None, always_steps: bool = False
    ) -> ParsedCompletion:
        """Read one completion (``options``: the row's ``options`` value, if any). The reasoning steps are cut when
        there is something to score (options mode, or a stated raw answer), or always with ``always_steps``."""
        completion_ids = list(completion_ids)
        text = self.tokenizer.decode(completion_ids, skip_special_tokens=True)
        letters = self.letters_for(options)
        found = find_statement(text, self.pattern, letters, option_texts(options) if letters else None)
        stated, start = found.answer, found.start
        end = self._token_at_char(completion_ids, start) if start is not None else len(completion_ids)
        while end > 0 and completion_ids[end - 1] in self.special_ids:
            end -= 1
        statement = answer_position = None
        if stated is not None:
            statement = (end, max(self._token_at_char(completion_ids, found.end - 1) + 1, end + 1))
            if found.letter is not None and letters is not None:
                answer_position = self._token_at_char(completion_ids, found.letter)
        answer = answer_ids = option_ids = None
        if letters is not None:
            option_ids = self.option_ids(letters)
            if stated is not None:
                answer, answer_ids = stated, [option_ids[letters.index(stated)]]
        elif stated is not None:
            answer = stated
            answer_ids = self.tokenizer(" " + stated, add_special_tokens=False)["input_ids"]
        spans = None
        if letters is not None or answer_ids or always_steps:
            spans = split_steps(
                completion_ids,
                self.tokenizer,
                self.step_separator,
                reasoning_end=end,
                max_steps=self.prg_max_steps,
                fallback_separator="\n" if self.step_separator == DEFAULT_STEP_SEPARATOR else None,
                cache=self._text_cache,
            )
        statement_ids = self._statement_option_ids(completion_ids, answer_position, letters, stated)
        return ParsedCompletion(
            text,
            answer,
            answer_ids,
            option_ids,
            letters,
            spans,
            end,
            statement,
            answer_position if statement_ids else None,
            statement_ids,
        )

    def _statement_option_ids(
        self, completion_ids: list[int], position: int | None, letters: list[str] | None, stated: str | None
    ) -> list[int] | None:
        """The options' tokens in the form the statement wrote its letter (``" B"``, or ``"B"`` after a bracket):
        the set whose member at the stated letter's index is the token at ``position``; ``None`` when the letter
        shares its token with other text (``"B."``) and no form fits."""
        if position is None or letters is None or stated is None or position >= len(completion_ids):
            return None
        for prefix in (" ", ""):
            try:
                ids = self.option_ids(letters, prefix)
            except ValueError:
                continue
            if ids[letters.index(stated)] == completion_ids[position]:
                return ids
        return None
