"""Reading a completion: where its reasoning ends, what it answered, and what to score.

Shared by the trainer (rollouts and RD traces) and the evaluation, so both read answers the same way:

* the final-answer statement is the LAST match of ``answer_pattern``; its group 1 is the answer, and the reasoning is
  every token before the token where the match starts (trailing EOS / padding excluded). The statement itself is
  never a step, else ``p_K`` would trivially be ~1;
* multiple choice (``answer_probability="options"``): the options are the row's own (an ``options`` column: a dict
  keyed by letter, or a list) or ``answer_options``; an answer that is not one of them, or no statement at all, is
  replaced by the model's forced choice among the options after the trigger;
* ``raw``: the answer text is scored as its own tokens (encoded with a leading space); no statement, no trajectory.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .prg import prg_score, split_steps

__all__ = ["AnswerExtractor", "ParsedCompletion", "option_letters"]


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


@dataclass
class ParsedCompletion:
    """What :meth:`AnswerExtractor.parse` read from one completion."""

    text: str
    answer: str | None  # the stated answer (a valid letter in options mode), else None
    answer_ids: list[int] | None  # tokens to score (raw), or the stated option's first token (options)
    option_ids: list[int] | None  # the options' first tokens (options mode)
    letters: list[str] | None
    spans: list[tuple[int, int]] | None  # reasoning steps; None when there is nothing to score

    def fill(self, record: Any, aggregation: str = "monotone") -> Any:
        """Complete a scored :class:`~hytuning_trl.scoring.RolloutStats` with the text, the answer (the forced choice
        where none was stated in options mode) and its PRG; returns the record."""
        record.text = self.text
        record.answer = self.answer
        if record.answer_logprobs is not None:
            if self.option_ids is not None and self.answer is None:
                record.answer = self.letters[record.answer_index]
                record.answer_forced = True
            record.prg = prg_score(record.answer_logprobs, aggregation)
        return record


class AnswerExtractor:
    """Parses completions for PRG and confidence, with the settings of a :class:`HyTuningConfig` (or the same
    names given directly)."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        answer_pattern: str,
        step_separator: str = "\n\n",
        prg_max_steps: int = 16,
        answer_options: Sequence[str] | None = None,
        answer_probability: str = "raw",
        special_ids: Sequence[int] = (),
    ):
        self.tokenizer = tokenizer
        self.pattern = re.compile(answer_pattern)
        self.step_separator = step_separator
        self.prg_max_steps = prg_max_steps
        self.answer_options = list(answer_options) if answer_options else None
        self.answer_probability = answer_probability
        self.special_ids = {i for i in special_ids if i is not None}
        self._text_cache: dict[int, str] = {}
        self._option_cache: dict[tuple[str, ...], list[int]] = {}

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

    def option_ids(self, letters: Sequence[str]) -> list[int]:
        """First token of ``" " + letter`` for each option; they must differ."""
        key = tuple(letters)
        if key not in self._option_cache:
            ids = [self.tokenizer(" " + letter, add_special_tokens=False)["input_ids"][0] for letter in letters]
            if len(set(ids)) != len(ids):
                raise ValueError(
                    f"The options {list(letters)} do not start with distinct tokens; PRG cannot tell them apart."
                )
            self._option_cache[key] = ids
        return self._option_cache[key]

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

    def parse(self, completion_ids: Sequence[int], options: Any = None) -> ParsedCompletion:
        """Read one completion (``options``: the row's ``options`` value, if any)."""
        completion_ids = list(completion_ids)
        text = self.tokenizer.decode(completion_ids, skip_special_tokens=True)
        matches = list(self.pattern.finditer(text))
        stated = matches[-1].group(1) if matches else None
        end = self._token_at_char(completion_ids, matches[-1].start()) if matches else len(completion_ids)
        while end > 0 and completion_ids[end - 1] in self.special_ids:
            end -= 1
        letters = option_letters(options, self.answer_options) if self.answer_probability == "options" else None
        answer = answer_ids = option_ids = None
        if letters is not None:
            option_ids = self.option_ids(letters)
            letter = stated[0].upper() if stated else None
            if letter in letters:
                answer, answer_ids = letter, [option_ids[letters.index(letter)]]
        elif stated is not None:
            answer = stated
            answer_ids = self.tokenizer(" " + stated, add_special_tokens=False)["input_ids"]
        spans = None
        if letters is not None or answer_ids:
            spans = split_steps(
                completion_ids,
                self.tokenizer,
                self.step_separator,
                reasoning_end=end,
                max_steps=self.prg_max_steps,
                fallback_separator="\n" if self.step_separator == "\n\n" else None,
                cache=self._text_cache,
            )
        return ParsedCompletion(text, answer, answer_ids, option_ids, letters, spans)
