"""`testbed.label_every_word`: a perception step cut after every word, with a label at every word.

The promise: the pieces join back into the step and tokenize to the very tokens of the whole step (so only labels
are added), a correct step's pieces are all True; under "first_error" a misread's are True up to the first word
that differs from the gold caption and False from it on, under "each_word" exactly its wrong words are False; the
later steps keep their labels, and a record it cannot cut is named.
"""

from __future__ import annotations

import pytest

from trl_vlprm.cpu_recipe import CPURecipe
from trl_vlprm.data.schema import RecordError
from trl_vlprm.testbed import label_every_word, read_metadata
from trl_vlprm.trainer.tokenization import encode_steps
from trl_vlprm.types import word_pieces


@pytest.fixture(scope="module")
def records():
    recipe = CPURecipe.lookalike(num_puzzles=24)
    return recipe, recipe.supervision(24, seed=3, perception_error_rate=0.5)


def test_pieces_are_the_steps_tokens_with_a_label_at_every_word(records, tmp_path):
    recipe, data = records
    cut = label_every_word(data, convention="first_error")
    each = label_every_word(data)  # "each_word", the default
    assert len(cut) == len(data) == 96 and cut["images"] == data["images"]  # images untouched
    tokenizer = recipe.build_model(tmp_path / "tiny")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    misreads = 0
    for whole, pieces, alone in zip(data, cut, each):
        assert alone["completions"] == pieces["completions"] and alone["step_types"] == pieces["step_types"]
        perception = sum(t == "perception" for t in pieces["step_types"])
        assert "".join(pieces["completions"][:perception]) == whole["completions"][0]
        assert pieces["completions"][perception:] == whole["completions"][1:]
        assert pieces["labels"][perception:] == whole["labels"][1:]  # the later steps keep their labels
        tokens = [i for step in encode_steps(tokenizer, whole["completions"], "") for i in step]
        assert [i for step in encode_steps(tokenizer, pieces["completions"], "") for i in step] == tokens
        words = pieces["labels"][:perception]
        assert words[-1] == whole["labels"][0] and perception > 10  # the step's own verdict still ends it
        if whole["labels"][0]:
            assert all(words) and all(alone["labels"][:perception])
            continue
        misreads += 1
        family, state = read_metadata(whole)
        gold = family.describe(state, family.observe(state))
        first = words.index(False)
        assert all(words[:first]) and not any(words[first:])  # first-error, word by word
        right_so_far = "".join(pieces["completions"][:first])
        assert gold.startswith(right_so_far) and not gold.startswith(right_so_far + pieces["completions"][first])
        # each word judged alone: the misread's words that differ from the gold's are False, the others True
        gold_pieces = word_pieces(gold)
        judged = alone["labels"][:perception]
        if len(gold_pieces) == perception:  # a swap of words: position by position
            assert judged == [a == b for a, b in zip(pieces["completions"][:perception], gold_pieces)]
        assert not all(judged) and judged[first] is False and alone["labels"][perception:] == whole["labels"][1:]
    assert 30 <= misreads <= 66


def test_a_record_it_cannot_cut_is_named(records):
    _, data = records
    row = data[0]
    with pytest.raises(RecordError, match=r"metadata.*missing"):
        label_every_word(data.select([0]).remove_columns("metadata").add_column("metadata", [""]))
    wrong = {**row, "labels": [not row["labels"][0]] + row["labels"][1:]}
    with pytest.raises(RecordError, match="step 0 labelled"):
        label_every_word(data.from_list([wrong], features=data.features))
    typed = {**row, "step_types": ["reasoning"] * len(row["step_types"])}
    with pytest.raises(RecordError, match="not a perception step"):
        label_every_word(data.from_list([typed], features=data.features))
    with pytest.raises(ValueError, match=r"convention must be one of \('each_word', 'first_error'\), got 'last'"):
        label_every_word(data, convention="last")


def test_word_pieces_join_back_and_cut_before_each_word():
    caption = "The colors are ['red', '?', 'blue']."
    assert word_pieces(caption) == ["The", " colors", " are", " ['red", "', '?', 'blue", "']."]
    for text in ("", "...", " x ", "é ü!", caption):
        assert "".join(word_pieces(text)) == text


def test_each_word_marks_a_caption_with_words_missing_and_aligns_an_inserted_one(records):
    """A misread that drops words has no wrong word to mark: its last piece is labelled wrong; a misread that adds
    one is aligned to the gold by common subsequence, so only the added word is wrong, not every word after it."""
    _, data = records
    row = data[0]
    family, state = read_metadata(row)
    gold = word_pieces(family.describe(state, family.observe(state)))
    shortened = {
        **row,
        "completions": ["".join(gold[:-3])] + row["completions"][1:],
        "labels": [False] + row["labels"][1:],
    }
    inserted = {
        **row,
        "completions": ["".join(gold[:2] + [" blue"] + gold[2:])] + row["completions"][1:],
        "labels": [False] + row["labels"][1:],
    }
    cut = label_every_word(data.from_list([shortened, inserted], features=data.features))
    short_labels = cut[0]["labels"][: len(gold) - 3]
    assert short_labels == [True] * (len(gold) - 4) + [False]
    added = cut[1]["labels"][: len(gold) + 1]
    assert added == [True, True, False] + [True] * (len(gold) - 2)
