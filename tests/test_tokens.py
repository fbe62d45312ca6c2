import pytest

from sae.models import clip_tokenizer
from sae.tokens import PromptError, find_token_indices


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


def tokens_at(tokenizer, prompt, positions):
    ids = tokenizer(prompt).input_ids
    return [tokenizer.convert_ids_to_tokens(ids[p]) for p in positions]


def test_single_token_words(tokenizer):
    # <start> a cat and a dog <end>
    assert find_token_indices(tokenizer, "a cat and a dog", ["cat", "dog"]) == [[2], [5]]


def test_word_split_into_several_tokens(tokenizer):
    prompt = "a photo of a hippopotamus and a cat"
    hippo, cat = find_token_indices(tokenizer, prompt, ["hippopotamus", "cat"])
    assert len(hippo) == 3 and hippo == [5, 6, 7]
    assert "".join(tokens_at(tokenizer, prompt, hippo)) == "hippopotamus</w>"
    assert tokens_at(tokenizer, prompt, cat) == ["cat</w>"]


def test_articles_and_case_are_ignored(tokenizer):
    assert find_token_indices(tokenizer, "A Cat and an apple", ["a cat", "an Apple"]) == [[2], [5]]


def test_noun_phrase(tokenizer):
    groups = find_token_indices(tokenizer, "a red car and a blue bench", ["red car", "blue bench"])
    assert groups == [[2, 3], [6, 7]]


def test_repeated_word_takes_occurrences_in_order(tokenizer):
    assert find_token_indices(tokenizer, "a cat and a cat", ["cat", "cat"]) == [[2], [5]]
    # the article "a" before each object is not mistaken for an object
    assert find_token_indices(tokenizer, "a bowl with a cat", ["cat", "bowl"]) == [[5], [2]]


def test_whole_words_only(tokenizer):
    with pytest.raises(PromptError, match="'cat' is not a word of the prompt"):
        find_token_indices(tokenizer, "a caterpillar and a dog", ["cat", "dog"])


def test_absent_word_is_a_clear_error(tokenizer):
    with pytest.raises(PromptError, match="'bird' is not a word of the prompt 'a cat and a dog'"):
        find_token_indices(tokenizer, "a cat and a dog", ["cat", "bird"])


def test_word_listed_more_often_than_it_appears(tokenizer):
    with pytest.raises(PromptError, match="listed more times"):
        find_token_indices(tokenizer, "a cat and a dog", ["cat", "cat"])


def test_prompt_over_the_encoder_length(tokenizer):
    prompt = "a cat and " * 30 + "a dog"
    with pytest.raises(PromptError, match="over the text encoder's 77"):
        find_token_indices(tokenizer, prompt, ["cat", "dog"])


def test_empty_objects_are_refused(tokenizer):
    with pytest.raises(PromptError):
        find_token_indices(tokenizer, "a cat", [])
    with pytest.raises(PromptError, match="no tokens"):
        find_token_indices(tokenizer, "a cat", ["  "])
