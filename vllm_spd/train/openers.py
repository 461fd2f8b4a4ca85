"""Openers: the first words of a user message, by task category, that steer the prompts
a target invents (``vllm_spd.train.invent --openers builtin``).

Left to itself a small chat model invents a narrow band of prompts (mostly "explain X"
questions); a draft head trained on the answers then meets unfamiliar tasks in real
use. Starting each invented message with an opener drawn from many task kinds (writing,
role play, reasoning, math, code, extraction, science, humanities, advice, editing) and
letting the target write the rest spreads the invented prompts over those kinds, while
the words after the opener, and the answers, stay the target's own.

The openers are generic instruction beginnings written for this project; none is taken
from an evaluation set. An opener carries no trailing space: byte-level BPE tokenizers
join a space to the word after it, so the target writes it.
"""

from __future__ import annotations

import random

BUILTIN: dict[str, tuple[str, ...]] = {
    "writing": (
        "Write a short story about", "Write a poem about", "Compose a blog post about",
        "Draft an email to", "Write a persuasive essay arguing", "Write a product description for",
        "Write a speech for", "Write a letter to", "Create a slogan for", "Write a haiku about",
        "Write the opening paragraph of a novel about", "Write a limerick about", "Draft a cover letter for",
        "Write a review of", "Write a dialogue between", "Write song lyrics about", "Write a news article about",
        "Write a fairy tale in which", "Describe a day in the life of", "Write an advertisement for",
    ),
    "roleplay": (
        "Pretend you are", "Imagine you are", "Act as", "You are a", "Play the role of",
        "Take on the persona of", "Respond as if you were", "Let's play a game where you are",
    ),
    "reasoning": (
        "Solve this riddle:", "What comes next in the sequence", "If all", "Three friends",
        "Which weighs more,", "There are three boxes", "Is the following argument valid?",
        "A farmer has", "Suppose that", "Explain the flaw in this reasoning:", "Who is telling the truth?",
        "Use logic to decide whether",
    ),
    "math": (
        "Solve for x:", "Calculate", "What is the sum of", "Find the derivative of", "A rectangle has",
        "How many ways can", "What is the probability that", "Prove that", "Simplify the expression",
        "A train leaves", "Convert", "What is 15% of", "Find the area of", "Integrate",
        "Find all solutions of", "What is the least common multiple of", "A store sells",
        "If a car travels",
    ),
    "code": (
        "Write a Python function that", "Implement a function in Python that", "Write a JavaScript function that",
        "Write a SQL query that", "Fix the bug in this code:", "Explain what this code does:",
        "Write a Python class that", "Complete this Python function:\n\ndef", "Write a program that",
        "How do I", "Write a function to check whether", "Given a list of integers, write",
        "Write a C++ program that", "Optimize this function:", "Write unit tests for", "def",
        "Implement a binary search", "Write a recursive function that", "Write a bash script that",
        "What is the time complexity of", "Refactor this code:", "Write a regular expression that",
    ),
    "extraction": (
        "Extract", "Summarize the following text:", "From the passage below, list",
        "Identify the main characters in", "Given the following table,", "Classify the following",
        "Read the paragraph and", "Convert this information to JSON:", "Find all the dates in",
        "Pick out the key facts from", "Sort these items by",
    ),
    "stem": (
        "Explain how", "What is the role of", "Describe the process of", "Why does", "What causes",
        "Explain the difference between", "In simple terms, what is", "How does a", "What happens when",
        "Describe the structure of", "What are the properties of", "How do scientists",
    ),
    "humanities": (
        "Discuss the impact of", "What were the main causes of", "Compare and contrast",
        "Analyze the themes of", "What is the significance of", "How did", "Describe the culture of",
        "Evaluate the argument that", "What are the ethical implications of", "Summarize the history of",
        "What can we learn from", "Who was",
    ),
    "advice": (
        "How can I", "Give me tips for", "What are some ways to", "Plan a", "Recommend", "Suggest",
        "Can you help me", "I need help with", "What should I", "Create a plan to", "Give me a recipe for",
        "Help me write", "What is the best way to", "I'm trying to",
    ),
    "editing": (
        "Rewrite the following sentence", "Edit this paragraph for grammar:", "Paraphrase",
        "Translate into French:", "Make this more formal:", "Shorten this text:",
        "Improve the style of", "Turn these notes into a paragraph:",
    ),
}


def builtin() -> list[tuple[str, str]]:
    """Every built-in opener as ``(category, opener)``."""
    return [(cat, op) for cat, ops in BUILTIN.items() for op in ops]


def read_openers(path: str) -> list[tuple[str, str]]:
    """Openers from a text file, one per line (``category<TAB>opener`` or just the
    opener; ``\\n`` stands for a line break; blank lines and ``#`` lines are skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            cat, _, op = line.partition("\t") if "\t" in line else ("file", "", line)
            op = op.replace("\\n", "\n").rstrip(" ")
            if op:
                out.append((cat.strip() or "file", op))
    if not out:
        raise ValueError(f"no openers in {path!r}")
    return out


def resolve(spec: str | None) -> list[tuple[str, str]] | None:
    """``None``/``"none"`` -> no openers; ``"builtin"`` -> ``builtin()``; else a file."""
    if spec is None or spec == "none":
        return None
    if spec == "builtin":
        return builtin()
    return read_openers(spec)


def draw(openers, seed: int) -> tuple[str, str]:
    """The opener of the request with ``seed`` (categories equally likely, then an
    opener of the category), so a run is reproducible request by request."""
    rng = random.Random(seed)
    cats = sorted({c for c, _ in openers})
    cat = rng.choice(cats)
    return rng.choice([o for o in openers if o[0] == cat])
