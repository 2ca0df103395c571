"""The answer contract: which option (or text) a completion states, and where its reasoning ends."""

import pytest

from hytuning_trl import AnswerExtractor, read_answer
from hytuning_trl.constants import DEFAULT_ANSWER_PATTERN

LETTERS = ["A", "B", "C", "D"]

# (completion text, expected reading in options mode A-D). Bugs each group catches are named in the comments.
PHRASINGS = [
    ("Step one.\n\nThe answer is B.", "B"),
    ("The answer is B", "B"),  # no final period
    ("The answer is definitely B.", "B"),  # first character of the next word was read ("D")
    ("The answer is cholera.", None),  # "C" from the first letter of a word
    ("The answer is a vitamin deficiency.", None),  # lowercase article read as option A
    ("The answer is A vitamin deficiency.", None),  # capitalised article read as option A
    ("The answer is a.", None),  # lowercase letters are not option letters
    ("The answer is Digoxin toxicity.", None),  # "D" from "Digoxin"
    ("The answer is Digoxin toxicity (D).", "D"),
    ("The answer is **A**.", "A"),  # markdown bold was read as no answer
    ("The answer is option B.", "B"),  # "option" was read as "O"
    ("The answer is (C).", "C"),
    ("The answer is C) Cholera.", "C"),
    ("The answer is: D", "D"),
    ("The final answer is A.", "A"),
    ("The answer is B or C.", None),  # two different letters: not stated
    ("The answer is A or B.", None),  # "A" before a conjunction is a letter, not an article
    ("The answer is B, not C.", None),
    ("The answer is E.", None),  # not one of the row's options
    ("The answer is Bacteria.", None),  # a letter inside a word
    ("The answer is B (B).", "B"),  # the same letter twice is one answer
    ("the answer is c.", None),
    ("I think it is B.", None),  # no statement
    ("The answer is B.\n\nWait, let me check.\nThe answer is", "B"),  # cut-off last statement: earlier one wins
    ("The answer is A.\n\nOn reflection, the answer is C.", "C"),  # the last valid statement wins
    ("The answer is:\n\n**B**", "B"),  # leading whitespace and ":" are skipped before the sentence starts
    ("The answer is B.\nC is wrong.", "B"),  # the sentence ends at the period, before "C"
]


@pytest.mark.parametrize("text,expected", PHRASINGS)
def test_options_phrasings(tokenizer, text, expected):
    extractor = AnswerExtractor(tokenizer, answer_options=LETTERS, answer_probability="options")
    parsed = extractor.parse(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert parsed.answer == expected
    assert read_answer(text, DEFAULT_ANSWER_PATTERN, LETTERS)[0] == expected


OPTIONS = {"A": "56", "B": "76", "C": "Digoxin toxicity", "D": "71"}
# A statement whose sentence is exactly one option's text reads as that option (SmolLM2 writes "The answer is 71.").
TEXT_PHRASINGS = [
    ("Tens: 5+1=6.\n\nThe answer is 71.", "D"),
    ("The answer is 71", "D"),  # no final period
    ("The answer is  digoxin   TOXICITY .", "C"),  # case and runs of spaces normalised
    ("The answer is 7.", None),  # matches no option
    ("The answer is 711.", None),  # a prefix of the text is not the text
    ("The answer is 71 or 56.", None),  # not exactly one option's text
    ("The answer is digoxin.", None),  # part of an option's text
    ("The answer is B (76).", "B"),  # a letter still wins
    ("The answer is 56.\n\nThe answer is 71.", "D"),  # the last valid statement wins
    ("The answer is 71.\n\nThe answer is 99.", "D"),  # ... and an invalid last one falls back
]


@pytest.mark.parametrize("text,expected", TEXT_PHRASINGS)
def test_statement_of_an_option_text(tokenizer, text, expected):
    extractor = AnswerExtractor(tokenizer, answer_probability="options")
    parsed = extractor.parse(tokenizer(text, add_special_tokens=False)["input_ids"], OPTIONS)
    assert parsed.answer == expected
    assert read_answer(text, DEFAULT_ANSWER_PATTERN, LETTERS, OPTIONS)[0] == expected
    assert read_answer(text, DEFAULT_ANSWER_PATTERN, LETTERS)[0] == (expected if "(76)" in text else None)


def test_option_text_shared_by_two_options_is_not_stated(tokenizer):
    options = {"A": "71", "B": "71.", "C": "56", "D": "65"}  # the same text after normalising
    assert read_answer("The answer is 71.", DEFAULT_ANSWER_PATTERN, LETTERS, options)[0] is None
    listed = ["71", "56", "65", "12"]  # options as a list: letters in order
    ids = tokenizer("The answer is 65.", add_special_tokens=False)["input_ids"]
    assert AnswerExtractor(tokenizer).parse(ids, listed).answer == "C"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The answer is Digoxin toxicity.", "Digoxin toxicity"),  # one word was captured ("Digoxin")
        ("The answer is 42 mg. Then more text.", "42 mg"),
        ("The answer is 3.5 mg/kg.", "3.5 mg/kg"),  # a decimal point is not the end of the sentence
        ("The answer is: cholera\nbecause of rice-water stools.", "cholera"),
        ("No statement here.", None),
        ("The answer is cholera.\n\nThe answer is", "cholera"),
    ],
)
def test_raw_phrasings(text, expected):
    assert read_answer(text, DEFAULT_ANSWER_PATTERN, None)[0] == expected


def test_reasoning_ends_at_the_winning_statement(tokenizer):
    text = "first we look.\n\nso the heart is likely.\nThe answer is B.\n\nhmm.\nThe answer is"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    parsed = AnswerExtractor(tokenizer, answer_options=LETTERS).parse(ids)
    end = parsed.spans[-1][1]
    assert tokenizer.decode(ids[:end]).strip() == "first we look.\n\nso the heart is likely."
    assert parsed.answer == "B"


def test_rows_with_options_use_options_mode(tokenizer):
    """Bug it catches: no `answer_options` silently switched multiple choice to raw mode."""
    extractor = AnswerExtractor(tokenizer)  # answer_probability="auto"
    ids = tokenizer("a b.\n\nThe answer is B.", add_special_tokens=False)["input_ids"]
    in_row = extractor.parse(ids, {"A": "x", "B": "y", "C": "z"})
    assert in_row.answer == "B" and in_row.option_ids is not None and in_row.letters == ["A", "B", "C"]
    raw = extractor.parse(ids)
    assert raw.answer == "B" and raw.option_ids is None
    with pytest.raises(ValueError, match="answer_options"):
        AnswerExtractor(tokenizer, answer_probability="options").parse(ids)
