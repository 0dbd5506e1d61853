"""Inputs shared by the tests: mixed lengths, punctuation, digits, whitespace and an empty string."""

QUERIES = [
    "What is the capital of China?",
    "Explain gravity",
    "how do vector databases index embeddings",
    "",
]

DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects "
    "and is responsible for the movement of planets around the sun.",
    "",
    "Milvus builds an index over vectors; search then returns the nearest ones.",
    ":) punctuation first, then words",
    "  leading spaces and\ttabs",
    "\nstarts with a newline",
    "1984 starts with digits",
    "Ünïcödé text — with dashes and «quotes»",
    " ".join(["long"] * 30 + ["document", "about", "the", "history", "of", "music"] * 20),
]
