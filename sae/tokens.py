"""Token positions of object words in an encoded prompt, computed from the tokenizer.

The public SepEn release hard-codes positions per template (and gets one template wrong); here they come from
the tokenizer itself. CLIP's BPE encodes each word on its own, so an object's tokens are a contiguous run of the
prompt's ids: a word split into several sub-tokens ("hippopotamus" -> hippo, potam, us) yields all of them, and
its map is the mean of theirs (see `sae.attention.object_maps`). T5's SentencePiece (PixArt) does the same with
`▁`-prefixed pieces and has no start token: its positions count from the first word.
"""

from __future__ import annotations

ARTICLES = ("a", "an", "the")


class PromptError(ValueError):
    """A prompt or one of its object words cannot be used (absent word, prompt too long)."""


def encode_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Ids of the prompt with start and end tokens, unpadded; a prompt over the encoder's length is an error."""
    ids = tokenizer(prompt, add_special_tokens=True, truncation=False).input_ids
    limit = tokenizer.model_max_length
    if len(ids) > limit:
        raise PromptError(f"prompt has {len(ids)} tokens, over the text encoder's {limit} "
                          f"(start and end included): shorten it: {prompt!r}")
    return ids


def strip_article(phrase: str) -> str:
    words = phrase.strip().split()
    while len(words) > 1 and words[0].lower() in ARTICLES:
        words = words[1:]
    return " ".join(words)


def find_token_indices(tokenizer, prompt: str, objects: list[str]) -> list[list[int]]:
    """Token positions of each object word or phrase in `prompt` (position 0 is CLIP's start token; T5 has none).

    Leading articles of an object ("a cat") are dropped. An object listed twice takes the prompt's occurrences
    in order ("a cat and a cat" with objects cat, cat -> the first and the second cat). Matching is on whole
    words: "cat" does not match inside "caterpillar".
    """
    if not objects:
        raise PromptError(f"no object words given for prompt {prompt!r}")
    ids = encode_prompt_ids(tokenizer, prompt)
    first = 1 if ids and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id else 0
    used: set[int] = set()
    groups = []
    for obj in objects:
        phrase = strip_article(obj)
        sub = tokenizer(phrase, add_special_tokens=False).input_ids if phrase else []
        if not sub:
            raise PromptError(f"object {obj!r} has no tokens: give a word of the prompt {prompt!r}")
        starts = [s for s in range(first, len(ids) - len(sub) + 1) if ids[s:s + len(sub)] == sub]
        free = [s for s in starts if not used.intersection(range(s, s + len(sub)))]
        if not free:
            if starts:
                raise PromptError(f"object {obj!r} is listed more times than it appears in {prompt!r}")
            raise PromptError(f"object {obj!r} is not a word of the prompt {prompt!r}: name the objects "
                              f"as they are written in the prompt (e.g. 'dogs' for 'two dogs')")
        group = list(range(free[0], free[0] + len(sub)))
        used.update(group)
        groups.append(group)
    return groups
