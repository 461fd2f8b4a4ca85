"""Training prompts built offline: ``python -m vllm_spd.train.prompts --out FILE.jsonl``.

A draft head is trained on the target's own answers (self-distillation, see
``vllm_spd.train.data.generate_conversations``), so all it needs is a varied set of user
prompts. This module writes one from hand-written templates x topics x tasks: explain,
how-to, lists, comparisons, pros and cons, creative writing, role play, rewriting,
summaries and extraction of short passages, Python (write, complete a stub, explain,
fix), other languages and SQL, math word problems with random numbers, and small logic
puzzles. Output lines are ``{"turns": [prompt], "category": ...}``.

The set is deterministic for a seed: each category's candidates are enumerated in a
fixed order, a seeded shuffle picks ``quota`` of them, and the union is shuffled again.
None of it comes from an evaluation set (MT-Bench, HumanEval): keep it that way.

>>> ps = build_prompts(200, seed=0)
>>> len(ps), len({p["turns"][0] for p in ps}), ps == build_prompts(200, seed=0)
(200, 200, True)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
from collections.abc import Callable, Iterator

from vllm_spd.train.data import write_records

# ---- topics --------------------------------------------------------------------------

CONCEPTS = [
    # science
    "photosynthesis", "the water cycle", "plate tectonics", "black holes", "the greenhouse effect",
    "natural selection", "DNA replication", "the immune system", "vaccines", "antibiotic resistance",
    "the speed of light", "gravity", "electric current", "magnetism", "nuclear fusion", "radioactive decay",
    "the periodic table", "chemical bonds", "acids and bases", "entropy", "quantum entanglement",
    "the Doppler effect", "ocean tides", "the seasons on Earth", "volcanoes", "earthquakes", "rainbows",
    "the nitrogen cycle", "cell division", "the human heart", "how the kidneys work", "sleep cycles",
    "the placebo effect", "climate change", "ocean acidification", "the ozone layer", "solar eclipses",
    "the Big Bang theory", "exoplanets", "the Milky Way", "superconductors", "semiconductors",
    # technology and computing
    "how the internet works", "DNS", "HTTP cookies", "public-key cryptography", "hash functions",
    "machine learning", "neural networks", "overfitting in machine learning", "gradient descent",
    "recursion", "Big O notation", "garbage collection", "virtual memory", "operating system processes",
    "threads and concurrency", "deadlocks", "databases and indexes", "SQL joins", "REST APIs",
    "version control with git", "containers and Docker", "cloud computing", "caching", "compilers",
    "open-source software", "two-factor authentication", "blockchains", "GPS", "Wi-Fi", "5G networks",
    "electric cars", "solar panels", "3D printing", "lithium-ion batteries", "search engines",
    "unit testing", "object-oriented programming", "functional programming", "regular expressions",
    "binary numbers", "floating-point numbers", "data compression", "hash tables", "linked lists",
    # economics, society, history
    "inflation", "interest rates", "supply and demand", "compound interest", "the stock market",
    "index funds", "taxes", "opportunity cost", "globalization", "the gig economy", "universal basic income",
    "democracy", "the separation of powers", "the Industrial Revolution", "the Renaissance",
    "the printing press", "the Roman Empire", "the Silk Road", "the Cold War", "the French Revolution",
    "the invention of writing", "the Great Depression", "the space race", "ancient Egyptian pyramids",
    "the scientific method", "critical thinking", "cognitive biases", "confirmation bias", "stoicism",
    "utilitarianism", "the social contract", "minimalism", "urbanization", "public transport",
    # everyday life and arts
    "how bread rises", "fermentation", "a balanced diet", "the benefits of exercise", "meditation",
    "time management", "procrastination", "habit formation", "active listening", "emotional intelligence",
    "jazz music", "impressionist painting", "the rules of chess", "how a bicycle stays upright",
    "composting", "recycling", "coffee brewing", "how airplanes fly", "how refrigerators work",
    "how vaccines are tested", "first aid for burns", "budgeting", "credit scores", "remote work",
]

HOWTO = [
    "make a simple budget", "start running as a beginner", "learn a new language", "bake bread at home",
    "prepare for a job interview", "write a good resume", "reduce stress at work", "improve my sleep",
    "start a vegetable garden", "save money on groceries", "learn to code", "organize my closet",
    "give a good presentation", "take better notes in class", "set up a home network",
    "back up my computer", "clean a cast iron pan", "make cold brew coffee", "train a puppy",
    "write a cover letter", "negotiate a salary", "plan a road trip", "care for a houseplant",
    "study for an exam", "stay focused while working from home", "make friends in a new city",
    "start a small business", "learn to play the guitar", "improve my handwriting", "cook rice perfectly",
    "fix a flat bicycle tire", "write a short story", "make a website", "use a spreadsheet to track expenses",
    "brew tea properly", "reduce plastic waste", "keep a journal", "stop procrastinating",
    "prepare for a marathon", "teach a child to read", "set goals for the new year", "read more books",
    "paint a room", "change a light bulb safely", "choose a laptop", "protect my online privacy",
    "create a strong password", "install Python on my computer", "debug a program", "learn touch typing",
    "make homemade pizza", "write a thank-you note", "plan a birthday party", "pack for a long trip",
]

LIST_THINGS = [
    ("tips for staying healthy", None), ("ways to save energy at home", None), ("benefits of reading", None),
    ("fun weekend activities", None), ("healthy breakfast ideas", None), ("famous scientists and their discoveries", None),
    ("programming languages and what they are used for", None), ("ideas for a science fair project", None),
    ("ways to be more productive", None), ("common mistakes new programmers make", None),
    ("reasons to learn history", None), ("indoor hobbies", None), ("ways to reduce anxiety", None),
    ("questions to ask in a job interview", None), ("uses of artificial intelligence", None),
    ("things to pack for a camping trip", None), ("strategies for learning math", None),
    ("ideas for a team-building event", None), ("kitchen tools every cook needs", None),
    ("ways to improve writing skills", None), ("renewable energy sources", None), ("good habits for students", None),
    ("interesting facts about the ocean", None), ("interesting facts about space", None),
    ("ways to make a website faster", None), ("features of a good password manager", None),
    ("signs of a good leader", None), ("ways to be kind to others", None), ("board games for families", None),
    ("classic novels worth reading", None), ("ideas for a short film", None), ("exercises you can do at home", None),
]

PAIRS = [
    ("cats", "dogs"), ("Python", "JavaScript"), ("tea", "coffee"), ("renting", "buying a home"),
    ("solar power", "wind power"), ("trains", "planes"), ("books", "movies"), ("SQL", "NoSQL databases"),
    ("lists", "tuples in Python"), ("stocks", "bonds"), ("electric cars", "gasoline cars"),
    ("working from home", "working in an office"), ("capitalism", "socialism"), ("viruses", "bacteria"),
    ("weather", "climate"), ("RAM", "hard drives"), ("TCP", "UDP"), ("classical music", "rock music"),
    ("running", "swimming"), ("city life", "country life"), ("paper books", "e-readers"),
    ("machine learning", "traditional programming"), ("a laptop", "a desktop computer"),
    ("democracy", "monarchy"), ("mitosis", "meiosis"), ("speed", "velocity"), ("weight", "mass"),
    ("git merge", "git rebase"), ("recursion", "iteration"), ("arrays", "linked lists"),
    ("Mars", "Venus"), ("the Greek gods", "the Roman gods"), ("baking", "frying"), ("chess", "checkers"),
]

FORMS = ["short poem", "haiku", "limerick", "short story", "blog post", "diary entry", "speech",
         "product description", "news report", "letter to a friend", "motivational message", "song chorus",
         "fairy tale", "dialogue between two characters", "advertisement", "movie plot summary"]

SUBJECTS = ["a rainy afternoon", "a lost cat finding its way home", "the first day of school", "the ocean at night",
            "a robot learning to paint", "friendship", "a trip to the mountains", "a busy city morning",
            "autumn leaves", "a dragon who is afraid of fire", "a time traveler", "a small bakery",
            "the last tree on a planet", "a new smartphone", "winning a chess tournament", "a quiet library",
            "a detective solving a mystery", "the moon", "a family dinner", "learning to ride a bike",
            "an astronaut's first day on Mars", "a garden in spring", "a haunted lighthouse", "a kind stranger",
            "a snowy village", "a talking tree", "a marathon runner", "a forgotten key", "the sound of rain",
            "a museum at midnight", "a young inventor", "a river journey"]

ROLES = [
    ("a tour guide in Rome", "Describe what we will see today."),
    ("a personal trainer", "Create a one-week beginner workout plan for me."),
    ("a chef", "Suggest a dinner menu for four people with a vegetarian guest."),
    ("a travel agent", "Plan a three-day trip to Japan for me."),
    ("a history teacher", "Tell your class about the fall of the Roman Empire."),
    ("a customer support agent", "A customer says their order arrived damaged. Respond to them."),
    ("a detective", "Explain how you solved your latest case."),
    ("a pirate captain", "Give a speech to your crew before a storm."),
    ("a doctor", "Explain to a patient why regular check-ups matter."),
    ("a career coach", "Help me decide between two job offers."),
    ("a museum guide", "Describe the most famous painting in the museum."),
    ("a medieval knight", "Describe a typical day in your life."),
    ("a science teacher", "Explain to a class of ten-year-olds why the sky is blue."),
    ("an astronaut", "Describe what it feels like to see Earth from space."),
    ("a librarian", "Recommend three books to a teenager who likes adventure."),
    ("a software engineer", "Explain to a new intern how code reviews work."),
    ("a park ranger", "Give visitors safety advice for hiking."),
    ("a financial advisor", "Explain to a young adult how to start investing."),
    ("a poet", "Describe your favourite season."),
    ("a sports commentator", "Describe the final minute of an exciting football match."),
    ("a startup founder", "Pitch your new app to investors in one minute."),
    ("a wise old wizard", "Give advice to a young apprentice."),
    ("a barista", "Explain the difference between a latte and a cappuccino to a customer."),
    ("a job interviewer", "Ask me five questions for a junior developer position."),
]

SENTENCES = [
    "hey can u send me the report by tomorrow thx",
    "The meeting was moved because a lot of people could not come.",
    "I think that the new policy is not very good for the workers.",
    "our product is really good and you should buy it now",
    "The results of the experiment were kind of surprising to everyone.",
    "Me and my friend went to the store and buyed some apples.",
    "The weather today is bad so the game is cancelled.",
    "Please make sure to turn off the lights when you leave the room.",
    "We are happy to announce that our new store opens next week.",
    "The software crashed again and I lost all my work.",
    "Thank you for your help with the project, it was great.",
    "The train was late, so I missed the beginning of the concert.",
]

REWRITES = ["Rewrite this sentence to be more formal: \"{s}\"", "Fix the grammar in this sentence: \"{s}\"",
            "Make this sentence more polite: \"{s}\"", "Rewrite this sentence in simple words: \"{s}\"",
            "Turn this sentence into a question: \"{s}\"", "Translate this sentence into French: \"{s}\""]

PASSAGES = [
    "The town of Millbrook opened its first public library in 1902. For decades it occupied two rooms above "
    "the post office. In 1968, after a fundraising campaign led by local teacher Ada Fenwick, the library moved "
    "into a new building on Elm Street. Today it lends more than 40,000 books a year and runs free coding "
    "classes for teenagers every Saturday.",
    "Honeybees communicate the location of food through a movement called the waggle dance. A forager returns "
    "to the hive and walks in a figure-eight pattern. The angle of the straight part of the dance shows the "
    "direction of the food relative to the sun, and its length shows the distance. Other bees watch the dance "
    "and then fly out to find the flowers.",
    "On March 3, 2021, the company Brightline Tools announced a new cordless drill. The drill weighs 1.2 "
    "kilograms, charges in 45 minutes and costs 89 dollars. Chief executive Maria Lopez said the product was "
    "designed after interviews with over 500 carpenters. Sales began in Canada and Mexico two weeks later.",
    "Sourdough bread is made without commercial yeast. Instead, bakers use a starter: a mixture of flour and "
    "water that collects wild yeast and bacteria from the environment. The bacteria produce lactic acid, which "
    "gives the bread its sour taste, while the yeast produces the gas that makes the dough rise. A healthy "
    "starter must be fed with fresh flour and water regularly.",
    "In the study, 120 volunteers were split into two groups. The first group walked for 30 minutes every day, "
    "while the second group kept their usual routine. After eight weeks, the walking group reported better "
    "sleep and lower stress, and their average resting heart rate fell by four beats per minute. The "
    "researchers, based in Oslo, plan a larger study next year.",
    "Lake Varna froze completely in the winter of 1985 for the first time in a century. Local fishermen "
    "cut holes in the ice and caught record numbers of trout. The mayor, Petar Ilic, organised a skating "
    "festival that attracted 10,000 visitors. Since then, the lake has never frozen over again, which "
    "scientists link to warmer winters.",
    "A compiler translates source code written by a programmer into machine code that a processor can run. "
    "It usually works in stages: it first breaks the text into tokens, then builds a tree that represents the "
    "structure of the program, checks that the program makes sense, optimises it, and finally generates the "
    "instructions. Some languages use an interpreter instead, which runs the program directly.",
    "The Greenway project will turn an old railway line into a 12-kilometre path for walkers and cyclists. "
    "Construction starts in May and should finish by October next year. The city council approved a budget "
    "of 3.5 million euros. Engineer Tom Becker says the path will connect three parks and two schools.",
    "Octopuses are known for their intelligence. They can open jars, escape from tanks and recognise "
    "individual people. Each of their eight arms contains many neurons, so the arms can react to touch "
    "without waiting for the brain. Octopuses also change colour in a fraction of a second to hide from "
    "predators or to communicate.",
    "At the annual meeting on June 14, the board of the Riverside Cooperative elected Samuel Okafor as its "
    "new chair. Membership grew from 850 to 1,130 households last year, and the cooperative opened a second "
    "grocery shop in the north of the city. Okafor promised to add a delivery service by December.",
    "Tea was first drunk in China thousands of years ago. It reached Japan in the ninth century and Europe in "
    "the seventeenth century, where it became especially popular in Britain. Today tea is the most widely "
    "consumed drink in the world after water, and the largest producers are China, India and Kenya.",
    "The team's new app lets users photograph a plant and learn its name within seconds. It was trained on "
    "two million images covering 15,000 species. In tests it named the correct species 91 percent of the "
    "time. The developers, a group of students from Lyon, released it for free in April 2023.",
]

PASSAGE_TASKS = ["Summarize the following text in one sentence.", "Summarize the following text in three bullet points.",
                 "Extract all the numbers in the following text and say what each one refers to.",
                 "List the people and places mentioned in the following text.",
                 "Write a catchy title for the following text.", "What is the main idea of the following text?",
                 "Write two questions that can be answered using the following text, and answer them.",
                 "Extract the key facts from the following text as a JSON object."]

OPEN_QUESTIONS = [
    "What are the pros and cons of {x}?", "Why is {x} important?", "What are common misconceptions about {x}?",
    "Give a short history of {x}.", "What would happen if {x} did not exist?", "How can a beginner learn about {x}?",
]

OPEN_TOPICS = ["social media", "remote work", "nuclear energy", "online learning", "electric scooters",
               "artificial intelligence", "video games", "self-driving cars", "space exploration",
               "fast fashion", "homeschooling", "cryptocurrency", "smartphones for children", "public libraries",
               "four-day work weeks", "open-plan offices", "standardized tests", "zoos", "tourism",
               "vertical farming", "bicycle lanes", "streaming services", "robots in factories", "paper money"]

# Python functions: (name, signature, description, examples [(call, result)]). Written for
# this module; deliberately not HumanEval problems.
FUNCTIONS = [
    ("chunk_list", "items: list, size: int", "Split items into consecutive chunks of length size (the last may be shorter).",
     [("chunk_list([1, 2, 3, 4, 5], 2)", "[[1, 2], [3, 4], [5]]")]),
    ("flatten", "nested: list", "Flatten a list of lists (one level deep) into a single list.",
     [("flatten([[1, 2], [3], []])", "[1, 2, 3]")]),
    ("run_length_encode", "text: str", "Return the run-length encoding of text as a list of (char, count) pairs.",
     [("run_length_encode('aaabcc')", "[('a', 3), ('b', 1), ('c', 2)]")]),
    ("merge_sorted", "a: list, b: list", "Merge two sorted lists into one sorted list without calling sort.",
     [("merge_sorted([1, 4, 9], [2, 3, 10])", "[1, 2, 3, 4, 9, 10]")]),
    ("transpose", "matrix: list", "Return the transpose of a rectangular matrix given as a list of rows.",
     [("transpose([[1, 2, 3], [4, 5, 6]])", "[[1, 4], [2, 5], [3, 6]]")]),
    ("word_frequencies", "text: str", "Count how often each lowercase word occurs in text (words are separated by spaces).",
     [("word_frequencies('the cat the dog')", "{'the': 2, 'cat': 1, 'dog': 1}")]),
    ("celsius_to_fahrenheit", "c: float", "Convert a temperature from Celsius to Fahrenheit.",
     [("celsius_to_fahrenheit(100)", "212.0"), ("celsius_to_fahrenheit(0)", "32.0")]),
    ("binary_search", "items: list, target: int", "Return the index of target in the sorted list items, or -1 if absent.",
     [("binary_search([1, 3, 5, 7], 5)", "2"), ("binary_search([1, 3], 4)", "-1")]),
    ("rotate_left", "items: list, k: int", "Rotate items to the left by k positions.",
     [("rotate_left([1, 2, 3, 4], 1)", "[2, 3, 4, 1]")]),
    ("is_anagram", "a: str, b: str", "Return True if a and b contain the same letters, ignoring case and spaces.",
     [("is_anagram('Listen', 'Silent')", "True"), ("is_anagram('abc', 'abd')", "False")]),
    ("snake_to_camel", "name: str", "Convert a snake_case identifier to camelCase.",
     [("snake_to_camel('max_retry_count')", "'maxRetryCount'")]),
    ("camel_to_snake", "name: str", "Convert a camelCase identifier to snake_case.",
     [("camel_to_snake('parseHttpHeader')", "'parse_http_header'")]),
    ("cumulative_sum", "numbers: list", "Return the running totals of numbers.",
     [("cumulative_sum([1, 2, 3, 4])", "[1, 3, 6, 10]")]),
    ("interleave", "a: list, b: list", "Interleave two lists; leftover elements of the longer list go at the end.",
     [("interleave([1, 2, 3], ['a'])", "[1, 'a', 2, 3]")]),
    ("dot_product", "u: list, v: list", "Return the dot product of two vectors of equal length.",
     [("dot_product([1, 2, 3], [4, 5, 6])", "32")]),
    ("normalize_spaces", "text: str", "Collapse every run of whitespace in text into one space and strip the ends.",
     [("normalize_spaces('  a   b\\tc ')", "'a b c'")]),
    ("count_words", "text: str", "Return the number of words in text.",
     [("count_words('hello big world')", "3"), ("count_words('')", "0")]),
    ("digits_sum", "n: int", "Return the sum of the decimal digits of a non-negative integer n.",
     [("digits_sum(1234)", "10")]),
    ("is_leap_year", "year: int", "Return True if year is a leap year in the Gregorian calendar.",
     [("is_leap_year(2000)", "True"), ("is_leap_year(1900)", "False")]),
    ("matrix_multiply", "a: list, b: list", "Multiply two matrices given as lists of rows.",
     [("matrix_multiply([[1, 2]], [[3], [4]])", "[[11]]")]),
    ("group_by_length", "words: list", "Group words by length into a dict mapping length to the list of words.",
     [("group_by_length(['a', 'bb', 'cc'])", "{1: ['a'], 2: ['bb', 'cc']}")]),
    ("most_common_char", "text: str", "Return the character that occurs most often in text (the first one on ties).",
     [("most_common_char('banana')", "'a'")]),
    ("pairwise_differences", "numbers: list", "Return the differences between consecutive numbers.",
     [("pairwise_differences([1, 4, 9, 16])", "[3, 5, 7]")]),
    ("clamp", "x: float, low: float, high: float", "Limit x to the interval [low, high].",
     [("clamp(15, 0, 10)", "10"), ("clamp(-2, 0, 10)", "0")]),
    ("title_case", "text: str", "Capitalise the first letter of every word in text.",
     [("title_case('the quick fox')", "'The Quick Fox'")]),
    ("invert_dict", "d: dict", "Swap the keys and values of a dictionary whose values are unique.",
     [("invert_dict({'a': 1, 'b': 2})", "{1: 'a', 2: 'b'}")]),
    ("second_max", "numbers: list", "Return the second largest distinct value of numbers, or None if there is none.",
     [("second_max([4, 1, 4, 3])", "3"), ("second_max([7])", "None")]),
    ("balanced_brackets", "text: str", "Return True if the brackets (), [] and {} in text are balanced.",
     [("balanced_brackets('{[()]}')", "True"), ("balanced_brackets('([)]')", "False")]),
    ("average", "numbers: list", "Return the arithmetic mean of a non-empty list of numbers.",
     [("average([2, 4, 9])", "5.0")]),
    ("count_primes_below", "n: int", "Return how many prime numbers are smaller than n.",
     [("count_primes_below(10)", "4")]),
    ("reverse_words", "sentence: str", "Reverse the order of the words in sentence.",
     [("reverse_words('one two three')", "'three two one'")]),
    ("hamming_distance", "a: str, b: str", "Return the number of positions where two equal-length strings differ.",
     [("hamming_distance('karolin', 'kathrin')", "3")]),
    ("lcm", "a: int, b: int", "Return the least common multiple of two positive integers.",
     [("lcm(4, 6)", "12")]),
    ("to_binary_string", "n: int, width: int", "Return n in binary, left-padded with zeros to width digits.",
     [("to_binary_string(5, 8)", "'00000101'")]),
    ("parse_key_values", "text: str", "Parse 'key=value' pairs separated by semicolons into a dict.",
     [("parse_key_values('a=1;b=two')", "{'a': '1', 'b': 'two'}")]),
    ("longest_run", "items: list", "Return the length of the longest run of equal consecutive items.",
     [("longest_run([1, 1, 2, 2, 2, 3])", "3")]),
    ("squares_of_odds", "numbers: list", "Return the squares of the odd numbers in numbers, in order.",
     [("squares_of_odds([1, 2, 3, 4, 5])", "[1, 9, 25]")]),
    ("initials", "full_name: str", "Return the upper-case initials of a full name, separated by dots.",
     [("initials('ada king lovelace')", "'A.K.L.'")]),
    ("seconds_to_hms", "seconds: int", "Format a number of seconds as 'H:MM:SS'.",
     [("seconds_to_hms(3725)", "'1:02:05'")]),
    ("unique_sorted_letters", "text: str", "Return the sorted list of distinct letters in text, ignoring case.",
     [("unique_sorted_letters('Hello')", "['e', 'h', 'l', 'o']")]),
    ("triangle_type", "a: int, b: int, c: int",
     "Return 'equilateral', 'isosceles', 'scalene' or 'invalid' for the side lengths a, b, c.",
     [("triangle_type(2, 2, 2)", "'equilateral'"), ("triangle_type(1, 2, 5)", "'invalid'")]),
    ("mask_email", "email: str", "Hide the user part of an email address except its first letter.",
     [("mask_email('alice@example.com')", "'a****@example.com'")]),
]

CODE_TASKS = [
    "reads a text file and prints the number of lines", "checks whether a string is a valid IPv4 address",
    "removes all punctuation from a string", "finds the largest file in a directory",
    "generates a random password of a given length", "converts a list of dictionaries to CSV",
    "computes the factorial of a number iteratively", "returns the n-th Fibonacci number using memoization",
    "sorts a list of tuples by their second element", "counts the vowels and consonants in a sentence",
    "validates that a string looks like an email address", "finds duplicate files by comparing their hashes",
    "downloads a web page and counts the links in it", "implements a stack class with push, pop and peek",
    "implements a queue using two stacks", "implements a simple LRU cache", "parses a date string like 2024-05-17",
    "computes the median of a list", "finds all permutations of a string", "checks if a number is a perfect square",
    "merges two dictionaries, summing values of shared keys", "prints a multiplication table",
    "converts Roman numerals to integers", "finds the longest word in a sentence", "draws a text histogram",
    "shuffles a list without using random.shuffle", "computes the distance between two GPS coordinates",
    "implements bubble sort", "implements quicksort", "implements a binary search tree with insert and search",
    "reads JSON from a file and prints its keys", "retries a function call up to three times",
    "times how long a function takes", "splits a large file into smaller files",
    "finds the most frequent element in a list", "checks whether two rectangles overlap",
]

LANGS = [("JavaScript", 3), ("C", 2), ("Java", 2), ("Rust", 1), ("Go", 1), ("Bash", 1), ("C++", 2)]

SQL_TASKS = [
    "find the ten customers who spent the most money", "count orders per month",
    "list employees who earn more than their manager", "find products that were never ordered",
    "compute the average salary per department", "delete duplicate rows from a table",
    "find the second highest salary", "list customers with more than five orders",
]

SNIPPETS = [
    "def f(xs):\n    return [x for x in xs if x % 2 == 0]",
    "def g(s):\n    return s == s[::-1]",
    "total = 0\nfor i in range(1, 11):\n    total += i * i\nprint(total)",
    "def h(d):\n    return sorted(d, key=d.get, reverse=True)[:3]",
    "import collections\n\ndef top(words):\n    return collections.Counter(words).most_common(1)[0][0]",
    "def k(n):\n    if n < 2:\n        return n\n    return k(n - 1) + k(n - 2)",
    "with open('data.txt') as f:\n    lines = [line.strip() for line in f if line.strip()]\nprint(len(lines))",
    "def m(a, b):\n    while b:\n        a, b = b, a % b\n    return a",
    "nums = [3, 1, 2]\nnums.sort()\nprint(nums[len(nums) // 2])",
    "def q(items):\n    seen = set()\n    return [x for x in items if not (x in seen or seen.add(x))]",
]

BUGGY = [
    ("def average(xs):\n    return sum(xs) / len(xs) + 1", "it should return the mean"),
    ("def last(items):\n    return items[len(items)]", "it should return the last element"),
    ("def is_even(n):\n    return n % 2 == 1", "it should return True for even numbers"),
    ("def count_a(s):\n    count = 0\n    for ch in s:\n        if ch == 'a':\n            count = 1\n    return count",
     "it should count the letters 'a'"),
    ("def reverse(s):\n    out = ''\n    for ch in s:\n        out = out + ch\n    return out", "it should reverse the string"),
    ("def maximum(xs):\n    best = 0\n    for x in xs:\n        if x > best:\n            best = x\n    return best",
     "it returns wrong results for lists of negative numbers"),
]

NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kofi", "Lena",
         "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq"]
ITEMS = [("apples", "apple"), ("pencils", "pencil"), ("notebooks", "notebook"), ("cookies", "cookie"),
         ("tickets", "ticket"), ("books", "book"), ("candles", "candle"), ("stamps", "stamp")]


# ---- generators: each yields (category, prompt) in a fixed order ---------------------

def _explain() -> Iterator[tuple[str, str]]:
    forms = ["Explain {c} in simple terms.", "Tell me about {c}.", "Can you explain {c} to a ten-year-old?",
             "Describe {c} in two paragraphs.", "Give me a short overview of {c} with an example.",
             "Why does {c} matter in everyday life?", "Write a short quiz with three questions about {c}."]
    for c, f in itertools.product(CONCEPTS, forms):
        yield "explain", f.format(c=c)


def _howto() -> Iterator[tuple[str, str]]:
    forms = ["How do I {t}?", "Give me step-by-step instructions to {t}.", "What is the best way to {t}?",
             "I want to {t}. Where should I start?"]
    for t, f in itertools.product(HOWTO, forms):
        yield "howto", f.format(t=t)


def _lists() -> Iterator[tuple[str, str]]:
    for (thing, _), k in itertools.product(LIST_THINGS, (3, 5, 7, 10)):
        yield "list", f"List {k} {thing}."
        yield "list", f"Give me {k} {thing}, with one sentence about each."


def _compare() -> Iterator[tuple[str, str]]:
    forms = ["Compare {a} and {b}.", "What is the difference between {a} and {b}?",
             "Which is better, {a} or {b}? Give arguments for both.", "Make a table comparing {a} and {b}."]
    for (a, b), f in itertools.product(PAIRS, forms):
        yield "compare", f.format(a=a, b=b)


def _open() -> Iterator[tuple[str, str]]:
    for x, f in itertools.product(OPEN_TOPICS, OPEN_QUESTIONS):
        yield "opinion", f.format(x=x)


def _writing() -> Iterator[tuple[str, str]]:
    for form, subject in itertools.product(FORMS, SUBJECTS):
        yield "writing", f"Write a {form} about {subject}."
    for name, topic in itertools.product(NAMES[:8], ["asking for a day off", "thanking a colleague",
                                                     "inviting the team to a lunch", "complaining about a late delivery",
                                                     "requesting feedback on a report", "announcing a new project"]):
        yield "writing", f"Write a short email to {name} {topic}."


def _roleplay() -> Iterator[tuple[str, str]]:
    forms = ["Pretend you are {r}. {q}", "Act as {r}. {q}", "You are {r}. {q} Keep it short."]
    for (r, q), f in itertools.product(ROLES, forms):
        yield "roleplay", f.format(r=r, q=q)


def _rewrite() -> Iterator[tuple[str, str]]:
    for s, f in itertools.product(SENTENCES, REWRITES):
        yield "rewrite", f.format(s=s)


def _passages() -> Iterator[tuple[str, str]]:
    for p, t in itertools.product(PASSAGES, PASSAGE_TASKS):
        yield "extraction", f"{t}\n\n{p}"


def _stub(name: str, sig: str, desc: str, examples) -> str:
    doc = "\n".join([desc] + [f"    >>> {call}\n    {res}" for call, res in examples])
    return f"def {name}({sig}):\n    \"\"\"{doc}\n    \"\"\"\n"


def _python() -> Iterator[tuple[str, str]]:
    for name, sig, desc, ex in FUNCTIONS:
        stub = _stub(name, sig, desc, ex)
        yield "code", f"Complete the code I provided.\n\n{stub}"
        yield "code", f"Complete the following Python function.\n\n{stub}"
        yield "code", f"Implement this function and add a few test cases:\n\n{stub}"
        yield "code", f"Write a Python function `{name}({sig})`. {desc}"
        yield "code", f"Write a Python function that does the following: {desc[0].lower() + desc[1:]}"
        yield "code", f"Write `{name}` in Python without any imports. {desc}"
        yield "code", f"Fill in the body of this function and explain it.\n\n```python\ndef {name}({sig}):\n    pass\n```\n\n{desc}"
    for task in CODE_TASKS:
        yield "code", f"Write a Python function that {task}."
        yield "code", f"Write a Python script that {task}. Explain how it works."
        yield "code", f"How would you write a Python program that {task}? Show the code."
        for lang, k in LANGS:
            if hash_index(task + lang) % 3 < k:
                yield "code", f"Write a {lang} program that {task}."
    for task in SQL_TASKS:
        yield "code", f"Write an SQL query to {task}."
    for s in SNIPPETS:
        yield "code", f"What does this Python code do?\n\n```python\n{s}\n```"
        yield "code", f"Explain this code line by line and suggest an improvement:\n\n```python\n{s}\n```"
    for code, want in BUGGY:
        yield "code", f"This function has a bug: {want}. Find and fix it.\n\n```python\n{code}\n```"


def hash_index(text: str) -> int:
    """A stable small hash (Python's ``hash`` of str changes between runs)."""
    h = 0
    for ch in text:
        h = (h * 131 + ord(ch)) % 1_000_003
    return h


def _math(rng: random.Random) -> Iterator[tuple[str, str]]:
    templates: list[Callable[[], str]] = [
        lambda: "{n} buys {a} {p} at ${c} each and pays with a ${b} bill. How much change does {n} get?".format(
            n=rng.choice(NAMES), a=rng.randint(2, 9), p=rng.choice(ITEMS)[0], c=rng.randint(1, 5), b=rng.choice([20, 50])),
        lambda: "A train travels {d} kilometres in {h} hours. What is its average speed? At that speed, how far does it go in {k} hours?".format(
            d=rng.randrange(120, 600, 10), h=rng.randint(2, 6), k=rng.randint(2, 9)),
        lambda: "{n} has {a} {p}. {m} gives {n} {b} more, and then {n} shares them equally among {k} friends. How many does each friend get?".format(
            n=rng.choice(NAMES), m=rng.choice(NAMES), a=rng.randint(5, 30), b=rng.randint(1, 20), p=rng.choice(ITEMS)[0], k=rng.randint(2, 5)),
        lambda: "A rectangle is {a} cm long and {b} cm wide. What are its area and its perimeter?".format(
            a=rng.randint(3, 40), b=rng.randint(2, 25)),
        lambda: "What is {p}% of {x}? Show your steps.".format(p=rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 75]), x=rng.randrange(40, 2000, 20)),
        lambda: "A shirt costs ${x}. It is on sale for {p}% off. What is the sale price?".format(
            x=rng.randint(12, 90), p=rng.choice([10, 15, 20, 25, 30, 50])),
        lambda: "Solve for x: {a}x + {b} = {c}.".format(a=rng.randint(2, 12), b=rng.randint(1, 50), c=rng.randint(60, 200)),
        lambda: "If you invest ${x} at {r}% interest compounded yearly, how much will you have after {t} years?".format(
            x=rng.randrange(500, 10000, 500), r=rng.randint(2, 8), t=rng.randint(2, 10)),
        lambda: "A recipe needs {a} cups of flour for {s} servings. How much flour is needed for {t} servings?".format(
            a=rng.randint(2, 6), s=rng.randint(2, 6), t=rng.randint(7, 20)),
        lambda: "{n} reads {p} pages a day. The book has {b} pages. How many days does it take to finish the book?".format(
            n=rng.choice(NAMES), p=rng.randint(10, 40), b=rng.randrange(150, 700, 10)),
        lambda: "What is the sum of all integers from 1 to {n}? Explain the trick you use.".format(n=rng.randrange(20, 500, 10)),
        lambda: "A bag has {r} red balls and {b} blue balls. If you pick one ball at random, what is the probability that it is red?".format(
            r=rng.randint(1, 12), b=rng.randint(1, 12)),
        lambda: "Find the greatest common divisor and the least common multiple of {a} and {b}.".format(
            a=rng.randint(6, 90), b=rng.randint(6, 90)),
        lambda: "A car uses {l} litres of fuel per 100 km. How much fuel does it need for a trip of {d} km?".format(
            l=rng.randint(4, 12), d=rng.randrange(50, 900, 10)),
        lambda: "The angles of a triangle are {a} degrees and {b} degrees. What is the third angle?".format(
            a=rng.randint(20, 80), b=rng.randint(20, 80)),
        lambda: "Convert {x} minutes into hours and minutes.".format(x=rng.randint(70, 1000)),
    ]
    for _ in range(40):
        for t in templates:
            yield "math", t()


def _reasoning(rng: random.Random) -> Iterator[tuple[str, str]]:
    for _ in range(120):
        a, b, c = rng.sample(NAMES, 3)
        kind = rng.randrange(5)
        if kind == 0:
            yield "reasoning", f"{a} is taller than {b}, and {b} is taller than {c}. Who is the shortest? Explain."
        elif kind == 1:
            yield "reasoning", (f"{a}, {b} and {c} each have a different pet: a cat, a dog and a fish. {a} does not have "
                                f"the dog. {b} has the fish. Which pet does each person have?")
        elif kind == 2:
            x = rng.randint(3, 9)
            yield "reasoning", (f"{a} is {x} years older than {b}. In {rng.randint(2, 10)} years the sum of their ages "
                                f"will be {rng.randint(30, 80)}. How old is {b} now?")
        elif kind == 3:
            yield "reasoning", (f"If all {rng.choice(['bloops', 'zorks', 'flims', 'granks'])} are "
                                f"{rng.choice(['razzies', 'plinks', 'wugs'])}, and some of those are green, can we conclude "
                                "that some of the first kind are green? Explain your reasoning.")
        else:
            d = rng.choice(["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"])
            yield "reasoning", f"If today is {d}, what day of the week will it be in {rng.randint(3, 100)} days?"


# Share of the prompts per category (the remainder is spread over the first ones).
QUOTAS = {"explain": 0.20, "code": 0.20, "howto": 0.08, "writing": 0.10, "math": 0.09, "compare": 0.06,
          "list": 0.05, "roleplay": 0.05, "extraction": 0.05, "opinion": 0.04, "rewrite": 0.03, "reasoning": 0.05}


def build_prompts(num: int = 3000, seed: int = 0) -> list[dict]:
    """``num`` distinct prompts as ``{"turns": [text], "category": c}``, deterministic in
    ``seed``. A category with fewer candidates than its quota gives all it has and the
    others fill the gap."""
    rng = random.Random(seed)
    pools: dict[str, list[str]] = {}
    for gen in (_explain(), _howto(), _lists(), _compare(), _open(), _writing(), _roleplay(), _rewrite(),
                _passages(), _python(), _math(random.Random(seed + 1)), _reasoning(random.Random(seed + 2))):
        for cat, text in gen:
            pools.setdefault(cat, []).append(text)
    for cat in pools:
        pools[cat] = list(dict.fromkeys(pools[cat]))   # drop duplicates, keep order
        rng.shuffle(pools[cat])
    picked: dict[str, list[str]] = {c: pools[c][: int(num * QUOTAS[c])] for c in QUOTAS}
    leftovers = [(c, t) for c in QUOTAS for t in pools[c][len(picked[c]):]]
    rng.shuffle(leftovers)
    out = [(c, t) for c in QUOTAS for t in picked[c]]
    out += leftovers[: max(0, num - len(out))]
    rng.shuffle(out)
    if len(out) < num:
        raise ValueError(f"only {len(out)} distinct prompts available, {num} requested")
    return [{"turns": [t], "category": c} for c, t in out]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vllm_spd.train.prompts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.add_argument("--num", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    prompts = build_prompts(a.num, a.seed)
    write_records(a.out, prompts)
    counts: dict[str, int] = {}
    for rec in prompts:
        counts[rec["category"]] = counts.get(rec["category"], 0) + 1
    print(json.dumps({"out": os.path.abspath(a.out), "prompts": len(prompts), "categories": counts}))


if __name__ == "__main__":
    main()
